-- runs: one row per compass command that writes; config never holds secrets.
CREATE TABLE runs (
    id VARCHAR PRIMARY KEY,
    command VARCHAR NOT NULL,
    config JSON,
    compass_version VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    status VARCHAR NOT NULL,          -- running | ok | failed
    summary JSON
);

-- No PRIMARY KEY on purpose: DuckDB's ART index makes bulk inserts ~4x slower. Ids stay unique because the
-- only writer (ingest) inserts with an anti-join on id inside its transaction, under DuckDB's file lock.
CREATE TABLE products (
    id VARCHAR NOT NULL,              -- content_id('product', lang, market, source_id or title)
    lang VARCHAR NOT NULL,
    market VARCHAR NOT NULL,
    source_id VARCHAR,
    title VARCHAR NOT NULL,
    category VARCHAR NOT NULL,        -- 'Fashion > Shoes > Sneakers'
    attributes JSON,
    description VARCHAR,
    price DOUBLE,
    currency VARCHAR,
    source_file VARCHAR,
    ingest_run VARCHAR
);
