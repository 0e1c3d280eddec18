-- example_transforms: lineage of shopper-style queries (structured route): the base query built from product
-- fields, and each rule of datagen/rules/*.yaml applied to it, in order. One row per example that has such a query
-- (query2title, category_query2title); join on examples.id.
CREATE TABLE example_transforms (
    example_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,            -- item | category | fragment (the pre-shopper title fragment)
    pattern VARCHAR,                  -- the item_query pattern the base came from, e.g. '{brand} {model}'
    base VARCHAR NOT NULL,            -- the query before any rule
    steps JSON NOT NULL,              -- [{"family", "rule", "from", "to"}, ...] in the order applied
    rules_hash VARCHAR,               -- hash of the merged rules (generic.yaml + <lang>.yaml) that produced it
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
