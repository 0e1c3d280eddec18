-- negative_sets: one per (miner model, parameters); training chooses a set.
CREATE TABLE negative_sets (
    set_id VARCHAR PRIMARY KEY,       -- params_hash of model + parameters
    model VARCHAR NOT NULL,
    params JSON,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE negatives (
    set_id VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,            -- rank among the candidates retrieved for the anchor
    negative_text VARCHAR NOT NULL,
    negative_example_id VARCHAR,
    score DOUBLE,
    positive_score DOUBLE,
    run_id VARCHAR,
    PRIMARY KEY (set_id, example_id, rank)
);

-- splits: by group (product / translation group), so a group never straddles train and test.
CREATE TABLE splits (
    example_id VARCHAR PRIMARY KEY,
    split VARCHAR NOT NULL,           -- train | dev | test
    group_id VARCHAR NOT NULL,
    policy_hash VARCHAR,
    run_id VARCHAR
);
