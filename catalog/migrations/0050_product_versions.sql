-- Product versions (issue 14.2). A product keeps its stable id (lang, market, source id or title) and gets a
-- content hash of what it says. Re-ingesting a changed product updates `products` to the new version; the old
-- version moves to `product_versions`, marked superseded (by which hash, in which run): nothing is deleted.
-- Examples built from the old version get a `product` decision (keep = false, reason product:superseded), so
-- kept_examples drops them and the next `generate` builds examples for the new version.
ALTER TABLE products ADD COLUMN content_hash VARCHAR;

-- The same expression as catalog/ingest_versions.py CONTENT_HASH_SQL (kept in step by a test).
UPDATE products SET content_hash = substr(sha256(concat_ws(chr(31), 'product-content', title, category,
    coalesce(attributes::VARCHAR, chr(30)), coalesce(description, chr(30)), coalesce(price::VARCHAR, chr(30)),
    coalesce(currency, chr(30)))), 1, 20);

CREATE TABLE product_versions (
    product_id VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    lang VARCHAR NOT NULL,
    market VARCHAR NOT NULL,
    source_id VARCHAR,
    title VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    attributes JSON,
    description VARCHAR,
    price DOUBLE,
    currency VARCHAR,
    source_file VARCHAR,
    ingest_run VARCHAR,
    superseded_by VARCHAR NOT NULL,    -- content hash of the version that replaced it
    superseded_run VARCHAR,            -- the ingest run that replaced it
    superseded_at TIMESTAMP DEFAULT current_timestamp
);
