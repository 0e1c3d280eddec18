"""Idempotent bulk inserts: a frame in, the rows whose key is new appended, the number added back.

Every writer of the catalog inserts batches of rows keyed by a content hash, and a rerun must add nothing. The
first way (compass.stage.insert_frame) anti-joined each batch against the table and counted the table before and
after. Here the count is the INSERT statement's own result, and a frame without duplicate keys is not copied.

This anti-join is what keeps keys unique: since migration 0110 the big append-only tables (examples, decisions,
signatures, negatives, splits, the embedding cache, ...) have no primary key, as `products` never had. Their ART
indexes cost more than the check they repeated: 5.5x the CPU of appending 5M keys, ten times the bytes on disk,
a rewrite of each whole index at every checkpoint, and memory in every writer (benchmarks/insert_rows.py,
issue 15). The one writer is guaranteed by DuckDB's file lock, so nothing races the check.

The anti-join reads the table's key column once per call, so one call costs O(table), and a stage that writes n
rows in batches of b costs O(n^2 / b): the lever is the caller's batch (stages commit 5,000-20,000 input rows
per transaction). DuckDB 1.5 offers nothing cheaper for an exact "insert what is new": an IN-list or point
lookups cost milliseconds each, and `INSERT OR IGNORE` needs the very index 0110 dropped (and was measured
slower than the anti-join when it existed).

So a caller that knows its keys are new skips the check (`new_keys=True`): a stage whose pending selection
excludes every key it wrote, read from one snapshot, under the one writer (`compass.stage.Stage.appends`). There
the anti-join could only ever find nothing, and it was 13% of langid's CPU at 1M products (issue 15).
"""

from __future__ import annotations

from typing import Any

import duckdb
import polars as pl

from compass.catalog.db import registered
from compass.errors import CompassError


def _frame(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    return pl.from_arrow(frame) if hasattr(frame, "schema") else pl.DataFrame(frame)


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, key: list[str], *,
                new_keys: bool = False) -> int:
    """Insert the rows of `frame` whose `key` is not in `table` yet; returns the number of rows added.

    Idempotent (a rerun adds 0); within the frame the first row of each key wins, and a row already in the table
    wins over the frame's. `frame` is a polars DataFrame (or an Arrow table); its columns are a subset of the
    table's. Runs inside the caller's transaction.

    `new_keys=True`: the caller guarantees that no key of the frame is in the table (see the module docstring);
    the rows are appended without reading the table (the frame's own duplicates still collapse to their first).
    """
    frame = _frame(frame)
    if frame.is_empty():
        return 0
    if not key or any(k not in frame.columns for k in key):
        raise CompassError(f"insert into {table}: key {key} must name columns of the frame ({frame.columns})")
    if frame.select(pl.struct(key).is_duplicated().any()).item():
        frame = frame.unique(subset=key, keep="first", maintain_order=True)
    cols = ", ".join(frame.columns)
    if new_keys:
        with registered(con, "_insert_rows", frame) as name:
            return int(con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {name}").fetchone()[0])
    cond = " AND ".join(f"t.{k} = f.{k}" for k in key)
    # A key column with one value in the whole frame (a stage name, a params hash, a set id) becomes a filter on
    # the table's scan: only rows with that value can match, and rows are appended stage by stage, so DuckDB's
    # zone maps skip the row groups of other stages and sets instead of probing them.
    const = [k for k in key if frame[k].null_count() == 0 and frame[k].n_unique() == 1]
    where = " AND ".join(f"{k} = ?" for k in const) or "TRUE"
    with registered(con, "_insert_rows", frame) as name:
        # DuckDB builds the hash table on the frame (the small side) and streams the table's key column past it.
        n = con.execute(f"INSERT INTO {table} ({cols}) SELECT {', '.join('f.' + c for c in frame.columns)} "
                        f"FROM {name} f ANTI JOIN (SELECT {', '.join(key)} FROM {table} WHERE {where}) t ON {cond}",
                        [frame[k][0] for k in const]).fetchone()[0]
    return int(n)
