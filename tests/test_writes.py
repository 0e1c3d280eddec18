"""catalog.writes.insert_rows: idempotent bulk inserts that return the rows added."""

from __future__ import annotations

import polars as pl
import pytest

from compass.catalog.db import Catalog
from compass.catalog.writes import insert_rows
from compass.errors import CompassError


def _ex(i: int, anchor: str = "a") -> dict:
    return {"id": f"e{i}", "route": "structured", "lang": "th", "task": "query2title", "anchor": f"{anchor}{i}",
            "positive": f"p{i}", "class_id": f"c{i}"}


def test_insert_rows_is_idempotent_first_wins_and_counts(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        with cat.transaction() as con:
            first = pl.DataFrame([_ex(1), _ex(2), _ex(1, anchor="second-copy-"), _ex(3)])
            assert insert_rows(con, "examples", first, ["id"]) == 3
        rows = {r["id"]: r["anchor"] for r in cat.query("SELECT id, anchor FROM examples")}
        assert rows == {"e1": "a1", "e2": "a2", "e3": "a3"}          # within the frame, the first row wins
        with cat.transaction() as con:
            again = pl.DataFrame([_ex(2, anchor="changed-"), _ex(4), _ex(5), _ex(4, anchor="dup-")])
            assert insert_rows(con, "examples", again, ["id"]) == 2   # e2 is stored: the stored row stays
            assert insert_rows(con, "examples", again, ["id"]) == 0   # a rerun adds nothing
            assert insert_rows(con, "examples", again.head(0), ["id"]) == 0
        rows = {r["id"]: r["anchor"] for r in cat.query("SELECT id, anchor FROM examples")}
        assert rows == {"e1": "a1", "e2": "a2", "e3": "a3", "e4": "a4", "e5": "a5"}


def test_insert_rows_composite_key_and_table_without_primary_key(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        dec = pl.DataFrame({"example_id": ["e1", "e1", "e2", "e1"], "stage": ["langid", "quality", "langid", "langid"],
                            "keep": [True, False, True, False], "reason": ["ok", "quality:short", "ok", "x"]})
        with cat.transaction() as con:
            assert insert_rows(con, "decisions", dec, ["example_id", "stage"]) == 3
            assert insert_rows(con, "decisions", dec, ["example_id", "stage"]) == 0
        assert cat.scalar("SELECT keep FROM decisions WHERE example_id = 'e1' AND stage = 'langid'") is True
        # products has no primary key (migration 0001): the key alone keeps it unique
        prods = pl.DataFrame({"id": ["p1", "p2", "p1"], "lang": "th", "market": "TH", "title": ["t1", "t2", "t1b"],
                              "category": "C"})
        with cat.transaction() as con:
            assert insert_rows(con, "products", prods, ["id"]) == 2
            assert insert_rows(con, "products", prods, ["id"]) == 0
        assert cat.query("SELECT id, title FROM products ORDER BY id") == [{"id": "p1", "title": "t1"},
                                                                         {"id": "p2", "title": "t2"}]


def test_a_key_column_constant_in_the_frame_filters_the_scan_with_the_same_rows(tmp_path):
    """One stage's decisions (stage and params constant in the frame): rows of other stages never match, rows of
    the same stage and params do; a frame whose stage varies takes the plain anti-join, with the same result."""
    def dec(ids, stage, ph="h1"):
        return pl.DataFrame({"example_id": ids, "stage": stage, "params_hash": ph, "keep": True, "reason": "ok"})

    key = ["example_id", "stage", "params_hash"]
    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        with cat.transaction() as con:
            assert insert_rows(con, "decisions", dec(["e1", "e2"], "langid"), key) == 2
            assert insert_rows(con, "decisions", dec(["e1", "e2", "e3"], "quality"), key) == 3   # other stage
            assert insert_rows(con, "decisions", dec(["e2", "e3", "e4"], "quality"), key) == 1   # e4 only
            assert insert_rows(con, "decisions", dec(["e1"], "quality", "h2"), key) == 1          # other params
            mixed = pl.concat([dec(["e1", "e5"], "langid"), dec(["e1"], "quality", "h2")])        # not constant
            assert insert_rows(con, "decisions", mixed, key) == 1                                  # e5 only
        assert cat.scalar("SELECT count(*) FROM decisions") == 8
        assert cat.scalar("SELECT count(*) FROM (SELECT DISTINCT example_id, stage, params_hash FROM decisions)") == 8


def test_insert_rows_rejects_a_key_the_frame_lacks(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat, cat.transaction() as con:
        with pytest.raises(CompassError, match="key"):
            insert_rows(con, "examples", pl.DataFrame([_ex(1)]), ["example_id"])


BULK = ("examples", "decisions", "example_transforms", "structured_products", "minhash_signatures",
        "example_signatures", "dedup_members", "embedding_cache", "mined_examples", "negatives", "splits")


def _tables(cat: Catalog) -> dict[str, list[tuple]]:
    return {t: sorted(cat.con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in BULK}


def test_0110_drops_bulk_keys_keeps_rows_and_reruns_add_nothing(tmp_path):
    """A catalog written with primary keys (migrations up to 0100) keeps every row when 0110 rebuilds its bulk
    tables without them; uniqueness then rests on insert_rows: rerunning the stages adds nothing."""
    from conftest import SAMPLES

    from compass.catalog.ingest import ingest_file
    from compass.datagen.structured_run import run_structured
    from compass.filters.build import run_filters
    from compass.train.splits import assign_splits

    path = tmp_path / "old.duckdb"
    with Catalog(path, create=True, upto="0100_structured_products") as old:
        assert "0110_bulk_tables_without_primary_keys" in old.pending_migrations()
        ingest_file(old, SAMPLES / "vi.jsonl", "vi", "VN", None, "fail", "r")
        run_structured(old, "r", progress=False)
        run_filters(old, ["langid", "quality", "dedup"], progress=False)
        assign_splits(old)
        keyed = {r[0] for r in old.con.execute("SELECT table_name FROM duckdb_constraints() "
                                                "WHERE constraint_type = 'PRIMARY KEY'").fetchall()}
        assert set(BULK) <= keyed
        before = _tables(old)
    assert sum(map(len, before.values())) > 2000 and before["dedup_members"] and before["splits"]
    with Catalog(path) as cat:                                    # opening it applies 0110
        keyed = {r[0] for r in cat.con.execute("SELECT table_name FROM duckdb_constraints() "
                                                "WHERE constraint_type = 'PRIMARY KEY'").fetchall()}
        assert not keyed & set(BULK) and {"runs", "generations", "split_policies"} <= keyed
        assert _tables(cat) == before
        assert cat.scalar("SELECT count(*) FROM kept_examples") > 0   # the views still read the new tables
        run_structured(cat, "r2", progress=False)
        run_filters(cat, ["langid", "quality", "dedup"], progress=False)
        assign_splits(cat)
        with cat.transaction() as con:                             # a stored row sent again is not added
            again = cat.frame("SELECT * EXCLUDE (created_at) FROM examples LIMIT 5")
            assert insert_rows(con, "examples", again, ["id"]) == 0
        assert _tables(cat) == before
