-- The big append-only tables lose their PRIMARY KEYs, as `products` never had one (0001_core). Every writer
-- inserts through compass.catalog.writes.insert_rows, whose anti-join on the key inside the writer's
-- transaction, under DuckDB's one-writer file lock, keeps the keys unique; the ART index behind a primary key
-- only repeated that check, at a price that grows with the catalog (issue 15, measured on DuckDB 1.5.6):
--   * 5M keys appended in 100 transactions: 36.8 CPU-s with the key, 6.7 without; the file 781 MB against 75 MB;
--   * at 100k products about 500 MB of a 1.49 GB catalog were key indexes, and every checkpoint rewrote them
--     whole, so a long stage paid O(n^2);
--   * a writer keeps the index of every table it appends to in its memory.
-- Small tables keep their keys (runs, generations, encoder_models, negative_sets, split_policies).
-- DuckDB cannot drop a primary key in place: each table is rebuilt with the same columns (key columns NOT NULL),
-- its rows copied by name, and renamed over the old one. Views (kept_examples, positive_clusters) bind by name.

CREATE TABLE examples__new (id VARCHAR NOT NULL, route VARCHAR NOT NULL, lang VARCHAR NOT NULL, market VARCHAR,
    task VARCHAR NOT NULL, persona VARCHAR, anchor VARCHAR NOT NULL, positive VARCHAR NOT NULL,
    class_id VARCHAR NOT NULL, product_id VARCHAR, translation_group VARCHAR, source_example_id VARCHAR,
    template_id VARCHAR, template_version VARCHAR, request_id VARCHAR, run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp);
INSERT INTO examples__new BY NAME SELECT * FROM examples;
DROP TABLE examples;
ALTER TABLE examples__new RENAME TO examples;

CREATE TABLE decisions__new (example_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, keep BOOLEAN NOT NULL,
    reason VARCHAR NOT NULL, score DOUBLE, params_hash VARCHAR NOT NULL DEFAULT '',
    enforced BOOLEAN NOT NULL DEFAULT TRUE, run_id VARCHAR, created_at TIMESTAMP DEFAULT current_timestamp);
INSERT INTO decisions__new BY NAME SELECT * FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions__new RENAME TO decisions;

CREATE TABLE example_transforms__new (example_id VARCHAR NOT NULL, kind VARCHAR NOT NULL, pattern VARCHAR,
    base VARCHAR NOT NULL, steps JSON NOT NULL, rules_hash VARCHAR, run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp);
INSERT INTO example_transforms__new BY NAME SELECT * FROM example_transforms;
DROP TABLE example_transforms;
ALTER TABLE example_transforms__new RENAME TO example_transforms;

CREATE TABLE structured_products__new (product_id VARCHAR NOT NULL, "version" INTEGER NOT NULL,
    content_hash VARCHAR, params_hash VARCHAR NOT NULL, examples INTEGER NOT NULL, run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp);
INSERT INTO structured_products__new BY NAME SELECT * FROM structured_products;
DROP TABLE structured_products;
ALTER TABLE structured_products__new RENAME TO structured_products;

CREATE TABLE minhash_signatures__new (text_hash VARCHAR NOT NULL, shingling VARCHAR NOT NULL,
    sig_params VARCHAR NOT NULL, signature BLOB NOT NULL, run_id VARCHAR);
INSERT INTO minhash_signatures__new BY NAME SELECT * FROM minhash_signatures;
DROP TABLE minhash_signatures;
ALTER TABLE minhash_signatures__new RENAME TO minhash_signatures;

CREATE TABLE example_signatures__new (example_id VARCHAR NOT NULL, field VARCHAR NOT NULL,
    sig_params VARCHAR NOT NULL, text_hash VARCHAR NOT NULL, shingling VARCHAR NOT NULL, run_id VARCHAR);
INSERT INTO example_signatures__new BY NAME SELECT * FROM example_signatures;
DROP TABLE example_signatures;
ALTER TABLE example_signatures__new RENAME TO example_signatures;

CREATE TABLE dedup_members__new (example_id VARCHAR NOT NULL, field VARCHAR NOT NULL, "scope" VARCHAR NOT NULL,
    text_hash VARCHAR NOT NULL, shingling VARCHAR NOT NULL, sig_params VARCHAR NOT NULL, seq BIGINT NOT NULL,
    cluster_id VARCHAR NOT NULL, dup_of VARCHAR, exact BOOLEAN, run_id VARCHAR,
    params_hash VARCHAR NOT NULL DEFAULT '');
INSERT INTO dedup_members__new BY NAME SELECT * FROM dedup_members;
DROP TABLE dedup_members;
ALTER TABLE dedup_members__new RENAME TO dedup_members;

CREATE TABLE embedding_cache__new (model_fp VARCHAR NOT NULL, text_hash VARCHAR NOT NULL, vec FLOAT[] NOT NULL,
    run_id VARCHAR);
INSERT INTO embedding_cache__new BY NAME SELECT * FROM embedding_cache;
DROP TABLE embedding_cache;
ALTER TABLE embedding_cache__new RENAME TO embedding_cache;

CREATE TABLE mined_examples__new (set_id VARCHAR NOT NULL, example_id VARCHAR NOT NULL, lang VARCHAR NOT NULL,
    pool VARCHAR NOT NULL, n_examined INTEGER NOT NULL, n_negatives INTEGER NOT NULL,
    refused_near_dup INTEGER NOT NULL, refused_class INTEGER NOT NULL, refused_margin INTEGER NOT NULL,
    refused_rank INTEGER NOT NULL, positive_retrieved BOOLEAN NOT NULL, run_id VARCHAR);
INSERT INTO mined_examples__new BY NAME SELECT * FROM mined_examples;
DROP TABLE mined_examples;
ALTER TABLE mined_examples__new RENAME TO mined_examples;

CREATE TABLE negatives__new (set_id VARCHAR NOT NULL, example_id VARCHAR NOT NULL, rank INTEGER NOT NULL,
    negative_text VARCHAR NOT NULL, negative_example_id VARCHAR, score DOUBLE, positive_score DOUBLE,
    run_id VARCHAR, "source" VARCHAR DEFAULT 'positives');
INSERT INTO negatives__new BY NAME SELECT * FROM negatives;
DROP TABLE negatives;
ALTER TABLE negatives__new RENAME TO negatives;

CREATE TABLE splits__new (example_id VARCHAR NOT NULL, split VARCHAR NOT NULL, group_id VARCHAR NOT NULL,
    policy_hash VARCHAR, run_id VARCHAR);
INSERT INTO splits__new BY NAME SELECT * FROM splits;
DROP TABLE splits;
ALTER TABLE splits__new RENAME TO splits;
