-- Decisions keyed by their parameters (issue 13): (example_id, stage, params_hash), so a stage run with other
-- parameters (a changed threshold, a new `--against` eval set) judges again instead of finding "nothing to do".
-- DuckDB cannot change a primary key in place: the table is rebuilt with every row (and every column, whatever
-- earlier migrations added), and replaces the old one. Views over it (kept_examples, ...) bind by name when
-- queried, so they keep working unchanged. Old rows with no params hash get '' (the key needs a value).
CREATE TABLE decisions_keyed AS SELECT * REPLACE (coalesce(params_hash, '') AS params_hash) FROM decisions;
ALTER TABLE decisions_keyed ALTER COLUMN example_id SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN stage SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN keep SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN reason SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN params_hash SET DEFAULT '';
ALTER TABLE decisions_keyed ALTER COLUMN params_hash SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN enforced SET DEFAULT TRUE;
ALTER TABLE decisions_keyed ALTER COLUMN enforced SET NOT NULL;
ALTER TABLE decisions_keyed ALTER COLUMN created_at SET DEFAULT current_timestamp;
ALTER TABLE decisions_keyed ADD PRIMARY KEY (example_id, stage, params_hash);
DROP TABLE decisions;
ALTER TABLE decisions_keyed RENAME TO decisions;

-- dedup_members are keyed by the clustering parameters too (the dedup decision's params hash): clusters made
-- with threshold 0.8 are not the index of a run with threshold 0.7. Old rows take the params hash of their
-- example's dedup decision (one per example before this migration).
CREATE TABLE dedup_members_keyed AS
SELECT m.*, coalesce((SELECT d.params_hash FROM decisions d WHERE d.example_id = m.example_id
                      AND d.stage = 'dedup' LIMIT 1), '') AS params_hash
FROM dedup_members m;
ALTER TABLE dedup_members_keyed ALTER COLUMN example_id SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN field SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN scope SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN text_hash SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN shingling SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN sig_params SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN seq SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN cluster_id SET NOT NULL;
ALTER TABLE dedup_members_keyed ALTER COLUMN params_hash SET DEFAULT '';
ALTER TABLE dedup_members_keyed ALTER COLUMN params_hash SET NOT NULL;
ALTER TABLE dedup_members_keyed ADD PRIMARY KEY (example_id, field, params_hash);
DROP TABLE dedup_members;
ALTER TABLE dedup_members_keyed RENAME TO dedup_members;

-- positive_clusters: one cluster per example's positive, from the latest dedup run that clustered it.
CREATE OR REPLACE VIEW positive_clusters AS
SELECT m.example_id, e.lang, m.cluster_id, m.dup_of
FROM dedup_members m JOIN examples e ON e.id = m.example_id LEFT JOIN runs r ON r.id = m.run_id
WHERE m.field = 'positive'
QUALIFY row_number() OVER (PARTITION BY m.example_id ORDER BY r.started_at DESC NULLS LAST, m.params_hash) = 1;

-- example_signatures: which stored signature (minhash_signatures) is each example's anchor / positive, written
-- by the shardable signature stage (dedup_signatures) and read by the clustering stage (dedup) through a join,
-- so clustering queries nothing per batch. Backfilled from the members earlier dedup runs recorded.
CREATE TABLE example_signatures (
    example_id VARCHAR NOT NULL,
    field VARCHAR NOT NULL,           -- anchor | positive
    sig_params VARCHAR NOT NULL,      -- as minhash_signatures.sig_params
    text_hash VARCHAR NOT NULL,       -- compass.text.normalized_hash of the text
    shingling VARCHAR NOT NULL,       -- 'word2' | 'char3'
    run_id VARCHAR,
    PRIMARY KEY (example_id, field, sig_params)
);
INSERT INTO example_signatures (example_id, field, sig_params, text_hash, shingling, run_id)
SELECT example_id, field, sig_params, any_value(text_hash), any_value(shingling), any_value(run_id)
FROM dedup_members GROUP BY example_id, field, sig_params;
