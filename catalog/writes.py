"""Idempotent bulk inserts: a frame in, the rows whose key is new appended, the number added back.

Every writer of the catalog inserts batches of rows keyed by a content hash, and a rerun must add nothing. The
first way (compass.stage.insert_frame) anti-joined each batch against the table and counted the table before and
after. Here the count is the INSERT statement's own result, and a frame without duplicate keys is not copied.

What stays: the anti-join reads the table's key column once per call, so one call costs O(table), and a stage
that writes n rows in batches of b costs O(n^2 / b). DuckDB 1.5 offers nothing cheaper for an exact "insert what
is new": `INSERT OR IGNORE` (ON CONFLICT DO NOTHING) on the primary key was measured slower than the anti-join,
and its cost per statement grows with the table the same way (benchmarks/insert_rows.py); an IN-list or point
lookups through the ART index cost milliseconds each; a plain INSERT is cheap (its key check uses the index)
but one existing key aborts the whole transaction. So the lever is the caller's batch: the bigger the
transaction, the fewer scans (measured in benchmarks/insert_rows.py).
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


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, key: list[str]) -> int:
    """Insert the rows of `frame` whose `key` is not in `table` yet; returns the number of rows added.

    Idempotent (a rerun adds 0); within the frame the first row of each key wins, and a row already in the table
    wins over the frame's. `frame` is a polars DataFrame (or an Arrow table); its columns are a subset of the
    table's. Runs inside the caller's transaction.
    """
    frame = _frame(frame)
    if frame.is_empty():
        return 0
    if not key or any(k not in frame.columns for k in key):
        raise CompassError(f"insert into {table}: key {key} must name columns of the frame ({frame.columns})")
    if frame.select(pl.struct(key).is_duplicated().any()).item():
        frame = frame.unique(subset=key, keep="first", maintain_order=True)
    cols = ", ".join(frame.columns)
    cond = " AND ".join(f"t.{k} = f.{k}" for k in key)
    with registered(con, "_insert_rows", frame) as name:
        # DuckDB builds the hash table on the frame (the small side) and streams the table's key column past it.
        n = con.execute(f"INSERT INTO {table} ({cols}) SELECT {', '.join('f.' + c for c in frame.columns)} "
                        f"FROM {name} f ANTI JOIN {table} t ON {cond}").fetchone()[0]
    return int(n)
