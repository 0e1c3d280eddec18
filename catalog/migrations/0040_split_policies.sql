-- split_policies: the rule that assigned the rows of `splits` (fractions, seed, grouping version).
-- A catalog holds one active policy, so `compass split` reruns and `compass train` put newly arrived examples
-- on their side by the same rule; changing the rule is an explicit `compass split --reset`.
CREATE TABLE split_policies (
    policy_hash VARCHAR PRIMARY KEY,
    test DOUBLE NOT NULL,
    dev DOUBLE NOT NULL,
    seed BIGINT NOT NULL,
    grouping VARCHAR NOT NULL,        -- version of the group rule in compass.train.splits (GROUPING)
    run_id VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
