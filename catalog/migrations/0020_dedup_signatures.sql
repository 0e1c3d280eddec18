-- MinHash signatures, stored once per distinct normalised text and shingling scheme, so a later dedup run
-- compares new examples with the whole catalog without recomputing old signatures.
CREATE TABLE minhash_signatures (
    text_hash VARCHAR NOT NULL,       -- compass.text.normalized_hash of the text
    shingling VARCHAR NOT NULL,       -- 'word2' (spaced scripts) | 'char3' (th, lo, km, my)
    sig_params VARCHAR NOT NULL,      -- params_hash of (num_perm, seed, scheme, shingle sizes)
    signature BLOB NOT NULL,          -- num_perm little-endian uint32 (datasketch affine32 hash values)
    run_id VARCHAR,
    PRIMARY KEY (text_hash, shingling, sig_params)
);

-- dedup_members: one row per (example, field) the dedup stage has seen; the cluster is the near-duplicate
-- cluster of that text within its scope. Anchors: scope 'lang/task' (their duplicates are rejected);
-- positives: scope 'lang' (clustered only, never rejected; mining refuses negatives from the same cluster).
CREATE TABLE dedup_members (
    example_id VARCHAR NOT NULL,
    field VARCHAR NOT NULL,           -- anchor | positive
    scope VARCHAR NOT NULL,           -- 'th/query2title' for anchors, 'th' for positives
    text_hash VARCHAR NOT NULL,
    shingling VARCHAR NOT NULL,
    sig_params VARCHAR NOT NULL,
    seq BIGINT NOT NULL,              -- first-seen order within the scope (0, 1, 2, ...)
    cluster_id VARCHAR NOT NULL,      -- '<field>:<example id of the cluster's first member>'
    dup_of VARCHAR,                   -- example id of the earliest (near-)duplicate, NULL for a first member
    exact BOOLEAN,                    -- dup_of found by normalised hash (TRUE) or MinHash LSH (FALSE)
    run_id VARCHAR,
    PRIMARY KEY (example_id, field, sig_params)
);

-- positive_clusters: the near-duplicate cluster of every example's positive (for mining's false-negative guard).
CREATE VIEW positive_clusters AS
SELECT m.example_id, e.lang, m.cluster_id, m.dup_of
FROM dedup_members m JOIN examples e ON e.id = m.example_id
WHERE m.field = 'positive';
