-- generations: one row per LLM request id (grounded and translate routes).
CREATE TABLE generations (
    request_id VARCHAR PRIMARY KEY,   -- content_id('request', template id+version, messages, sampling, seed, model)
    run_id VARCHAR,
    route VARCHAR NOT NULL,
    template_id VARCHAR,
    template_version VARCHAR,
    product_id VARCHAR,
    source_example_id VARCHAR,        -- translate route: the example being translated
    lang VARCHAR,
    persona VARCHAR,
    task VARCHAR,
    model VARCHAR,
    backend VARCHAR,
    messages JSON,
    sampling JSON,
    seed BIGINT,
    status VARCHAR NOT NULL,          -- ok | reject | failed
    reject_reason VARCHAR,
    raw_text VARCHAR,
    parsed JSON,
    finish_reason VARCHAR,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_ms DOUBLE,
    attempts INTEGER,
    created_at TIMESTAMP DEFAULT current_timestamp
);

-- examples: training pairs from every route.
CREATE TABLE examples (
    id VARCHAR PRIMARY KEY,           -- content_id('example', route, lang, task, anchor, positive)
    route VARCHAR NOT NULL,           -- grounded | translate | structured
    lang VARCHAR NOT NULL,
    market VARCHAR,
    task VARCHAR NOT NULL,
    persona VARCHAR,
    anchor VARCHAR NOT NULL,
    positive VARCHAR NOT NULL,
    class_id VARCHAR NOT NULL,        -- equivalence class of valid positives for the anchor
    product_id VARCHAR,
    translation_group VARCHAR,        -- shared by a source example and its translations
    source_example_id VARCHAR,
    template_id VARCHAR,
    template_version VARCHAR,
    request_id VARCHAR,
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
