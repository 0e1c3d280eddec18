-- structured_products: which product versions the structured route processed, with which parameters (the
-- stage's params hash). The structured stage's pending selection is "products whose current version has no row
-- for these params": a new product, an edited one (its version = its count of product_versions rows, so even an
-- edit back to an earlier content is a new version) or a changed parameter is processed; a product that yields
-- no pair is not selected again. Catalogs from before this table re-process every product once (inserts are
-- idempotent, so that adds only the rows a current version produces).
CREATE TABLE structured_products (
    product_id VARCHAR NOT NULL,
    version INTEGER NOT NULL,         -- count of the product's product_versions rows when it was processed
    content_hash VARCHAR,             -- products.content_hash then (for people reading the table)
    params_hash VARCHAR NOT NULL,     -- the structured stage's params hash (tasks, seed, shopper, rules, limit)
    examples INTEGER NOT NULL,        -- pairs it yielded (new or already stored)
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (product_id, version, params_hash)
);
