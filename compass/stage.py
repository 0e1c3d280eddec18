"""The stage contract: records in, rows out; a driver owns the loop.

A stage is a small object with `process(batch) -> rows`, a polars DataFrame of catalog rows in and a
DataFrame of rows to write out. It holds no connection and no global state, so the same stage can later be
mapped over Parquet shards by Ray Data. `drive` is the single-machine loop every command uses: select
pending rows, process them batch by batch under a progress bar, write each batch's output in one
transaction. A killed command keeps its complete batches; the next run selects only what is still pending.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import duckdb
import polars as pl
from tqdm.auto import tqdm

from compass.catalog.db import Catalog, registered
from compass.ids import params_hash


class Stage(ABC):
    """Base class: subclasses set `name` and implement `process`; `params()` feeds the params hash."""

    name: ClassVar[str] = "stage"

    def params(self) -> dict:
        return {}

    @property
    def params_hash(self) -> str:
        return params_hash({"stage": self.name, **self.params()})

    def setup(self) -> None:
        """Load models and other heavy state once, before the first batch (not in __init__, so a stage can be
        built cheaply and shipped to workers)."""

    @abstractmethod
    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        """Rows to write for this batch of input records."""


Writer = Callable[[duckdb.DuckDBPyConnection, pl.DataFrame], int]


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, key: list[str]) -> int:
    """Bulk insert `frame` into `table`, skipping rows whose `key` already exists; returns rows added."""
    if frame.is_empty():
        return 0
    frame = frame.unique(subset=key, keep="first", maintain_order=True)
    cols = ", ".join(frame.columns)
    cond = " AND ".join(f"t.{k} = f.{k}" for k in key)
    with registered(con, "_incoming", frame):
        before = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming f "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {cond})")
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] - before


def drive(cat: Catalog, stage: Stage, pending: pl.DataFrame, write: Writer, batch_size: int = 2000,
          desc: str | None = None, progress: bool = True) -> int:
    """Run `stage` over `pending` in batches; each batch's output is written in its own transaction."""
    stage.setup()
    written = 0
    bar = tqdm(total=pending.height, desc=desc or stage.name, unit="rows", disable=not progress, leave=False)
    try:
        for start in range(0, pending.height, batch_size):
            batch = pending.slice(start, batch_size)
            out = stage.process(batch)
            with cat.transaction() as con:
                written += write(con, out)
            bar.update(batch.height)
    finally:
        bar.close()
    return written
