-- decisions: filters never delete; they add one row per (example, stage).
CREATE TABLE decisions (
    example_id VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,           -- langid | quality | dedup | leakage ...
    keep BOOLEAN NOT NULL,
    reason VARCHAR NOT NULL,          -- stable code: 'ok', 'langid:wrong_lang:vi', 'dedup:near_dup_of:<id>'
    score DOUBLE,
    params_hash VARCHAR,
    enforced BOOLEAN NOT NULL DEFAULT TRUE,  -- FALSE for --label-only runs: recorded, excludes nothing
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (example_id, stage)
);

-- kept = rejected by no enforced decision.
CREATE VIEW kept_examples AS
SELECT e.* FROM examples e
WHERE NOT EXISTS (
    SELECT 1 FROM decisions d WHERE d.example_id = e.id AND NOT d.keep AND d.enforced
);
