-- Hard-negative mining (issue 5).
-- encoder_models: what a model fingerprint stands for (the fingerprint hashes the weights, tokenizer and
-- module config, so two paths to the same model share cache rows and a retrained model never reuses them).
CREATE TABLE encoder_models (
    model_fp VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,           -- name or path it was loaded from (first seen)
    dim INTEGER NOT NULL,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- embedding_cache: one normalised embedding per (model, exact text). Kept in the catalog (FLOAT[]) rather than
-- a side file so it is written in the same transactions as everything else, travels with the one file, and
-- `compass sql` can see it; re-mining after new examples arrive encodes only texts missing here.
CREATE TABLE embedding_cache (
    model_fp VARCHAR NOT NULL,
    text_hash VARCHAR NOT NULL,       -- compass.ids.text_hash of the exact text
    vec FLOAT[] NOT NULL,
    run_id VARCHAR,
    PRIMARY KEY (model_fp, text_hash)
);

-- mined_examples: one row per (negative set, example) once the example has been mined in that set, even when
-- no negative survived the guards, so reruns skip it (incremental) and refusals per guard are data.
CREATE TABLE mined_examples (
    set_id VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    lang VARCHAR NOT NULL,
    pool VARCHAR NOT NULL,            -- the candidate pool searched: '<lang>/<task>', '<lang>', '*/<task>' ...
    n_examined INTEGER NOT NULL,      -- candidates looked at (rank order, until per_example negatives were found)
    n_negatives INTEGER NOT NULL,
    refused_near_dup INTEGER NOT NULL,
    refused_class INTEGER NOT NULL,
    refused_margin INTEGER NOT NULL,
    refused_rank INTEGER NOT NULL,
    positive_retrieved BOOLEAN NOT NULL,  -- the example's own positive was among the retrieved texts
    run_id VARCHAR,
    PRIMARY KEY (set_id, example_id)
);
