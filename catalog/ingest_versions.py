"""Writing checked product rows: new products in, changed products as new versions, unchanged ones untouched.

A product's id is stable (lang, market, source id or title); its content hash covers what it says (title,
category, attributes, description, price, currency). Within the ingest transaction, per file:
- new id: inserted;
- known id, same hash: nothing (a rerun adds nothing);
- known id, other hash: the old row is copied to `product_versions` (superseded by the new hash, in this run), the
  `products` row takes the new content, and every example built from the product gets a `product` decision
  (keep = false, `product:superseded`, params_hash = the old content hash), so kept_examples drops it and the
  next `generate` builds examples for the new version. Decisions, not deletions.
"""

from __future__ import annotations

import duckdb

# Also in migration 0050 (the backfill): a test keeps both in step.
CONTENT_HASH_SQL = ("substr(sha256(concat_ws(chr(31), 'product-content', title, category, "
                    "coalesce(attributes::VARCHAR, chr(30)), coalesce(description, chr(30)), "
                    "coalesce(price::VARCHAR, chr(30)), coalesce(currency, chr(30)))), 1, 20)")
VERSION_COLUMNS = ["id", "lang", "market", "source_id", "title", "category", "attributes", "description", "price",
                   "currency", "source_file", "ingest_run"]
_CONTENT = ["title", "category", "attributes", "description", "price", "currency", "source_file", "ingest_run"]


def write_versions(con: duckdb.DuckDBPyConnection, stage: str, run_id: str | None) -> tuple[int, int]:
    """Apply one file's checked rows, the table `stage` (VERSION_COLUMNS and content_hash, one row per id);
    returns (new, changed). Runs inside the caller's transaction."""
    cols = ", ".join(VERSION_COLUMNS)
    try:
        # Changed: same id, other content. Compared with the current row only (products holds one row per id).
        changed = con.execute(f"""CREATE OR REPLACE TEMP TABLE _ingest_changed AS
                                  SELECT s.id, s.content_hash AS new_hash, p.content_hash AS old_hash
                                  FROM {stage} s JOIN products p ON p.id = s.id
                                  WHERE p.content_hash IS DISTINCT FROM s.content_hash""").fetchone()[0]
        if changed:
            con.execute(f"""INSERT INTO product_versions ({', '.join(c if c != 'id' else 'product_id'
                                                                    for c in VERSION_COLUMNS)},
                                                          content_hash, superseded_by, superseded_run)
                            SELECT {', '.join('p.' + c for c in VERSION_COLUMNS)},
                                   coalesce(p.content_hash, ''), c.new_hash, ?
                            FROM products p JOIN _ingest_changed c ON c.id = p.id""", [run_id])
            # Replace (decisions has no primary key to upsert on, migration 0110): a product edited back to an old
            # version and away again re-records the same (example, 'product', old hash) decision.
            sup = """SELECT e.id AS example_id, coalesce(c.old_hash, '') AS params_hash FROM examples e
                     JOIN _ingest_changed c ON c.id = e.product_id"""
            con.execute(f"""DELETE FROM decisions d USING ({sup}) s WHERE d.stage = 'product'
                            AND d.example_id = s.example_id AND d.params_hash = s.params_hash""")
            con.execute(f"""INSERT INTO decisions (example_id, stage, keep, reason, params_hash, run_id)
                            SELECT example_id, 'product', false, 'product:superseded', params_hash, ?
                            FROM ({sup})""", [run_id])
            sets = ", ".join(f"{c} = s.{c}" for c in _CONTENT)
            con.execute(f"""UPDATE products SET {sets}, content_hash = s.content_hash
                            FROM {stage} s WHERE s.id = products.id
                              AND products.id IN (SELECT id FROM _ingest_changed)""")
        # The statement's own count, rather than count(*) before and after (two scans of products).
        src = ", ".join("s." + c for c in VERSION_COLUMNS)
        new = con.execute(f"INSERT INTO products ({cols}, content_hash) SELECT {src}, "
                          f"s.content_hash FROM {stage} s ANTI JOIN products p ON p.id = s.id").fetchone()[0]
        return int(new), int(changed)
    finally:
        con.execute("DROP TABLE IF EXISTS _ingest_changed")


def revive_reproduced(con: duckdb.DuckDBPyConnection, example_ids: list[str]) -> None:
    """Examples that the current version of their product produces again are valid again.

    A writer calls this for every example it builds from the current products, new or already stored: an example
    with the same id under both versions (only the price changed, say) would otherwise stay superseded, since
    inserting an existing example is a no-op. The decision row is updated, not deleted."""
    if not example_ids:
        return
    import pyarrow as pa

    from compass.catalog.db import registered

    with registered(con, "reproduced_examples", pa.table({"id": pa.array(example_ids, pa.string())})) as name:
        con.execute(f"UPDATE decisions SET keep = true, reason = 'product:current' WHERE stage = 'product' "
                    f"AND NOT keep AND example_id IN (SELECT id FROM {name})")
