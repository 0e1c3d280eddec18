"""The stage contract: records in, `{table: rows}` out; the runner (`compass.run`) owns everything else.

A stage is a small object that a notebook, the CLI, the recipe runner and a distributed executor all drive the
same way. It declares:

- `Config`: a pydantic model of its parameters. `params()` (the config minus `volatile` fields such as batch
  sizes, which change how fast, not what) is hashed into `params_hash`; the hash keys the stage's pending
  selection, so a changed parameter (or a new `--against` set) is judged again instead of "nothing to do".
- `select(langs)`: the SQL of its pending input, *streamed* by the runner in `batch_size` batches (nothing
  materializes a whole table in Python). The selection reads only; it already excludes what this stage with
  these params has written, so a killed run resumes where its last committed batch ended.
- `writes`: `{table: key columns}`. `process(batch) -> {table: frame}` returns every output as data; the runner
  writes each batch's outputs in one transaction, idempotently on the keys (`write` may be overridden for a
  stage that must also touch rows it did not create, inside that same transaction). `appends` names the tables
  whose keys the selection itself guarantees are new: their rows are appended without reading the table.
- `shardable`: True when `process` depends only on its batch (and on what `prepare` loaded before the first
  batch), so concatenating the outputs of any split of the input equals the output of the whole input (a test
  pins this for every shardable stage). A global stage (dedup clustering, split assignment) is False: the
  runner feeds it every batch, in order, in one process, and calls `finish()` once at the end.
- `files()` / `use_files(fetch)`: what `prepare` left on disk for `process` (mining's pools), so an executor
  whose workers run on other machines can ship it.

A stage holds no connection: `prepare(cat)` may read the catalog before the first batch but must not keep `cat`;
heavy state (models, rules) loads in `setup()`, after the stage was built (cheap to build and to ship to a
worker). Drop reasons are data (decision rows), never log lines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from compass.catalog.db import Catalog
from compass.ids import params_hash


class NoConfig(BaseModel):
    """For stages without parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Selection:
    """A stage's pending input: SQL (bound parameters) that the runner streams batch by batch.

    `total` (optional SQL with the same parameters, returning one count) sizes the progress bar; without it the
    bar counts up with no total. A global stage's SQL must have a deterministic ORDER BY: the order is part of its
    result (first-seen dedup), and resumed runs stay identical to uninterrupted ones. A shardable stage's output
    does not depend on how its input is cut or ordered, so it may leave the sort out.
    """

    sql: str
    params: list = field(default_factory=list)
    total: str | None = None


class Stage(ABC):
    """Subclasses set `name`, `Config`, `writes`, and implement `select` and `process`."""

    name: ClassVar[str] = "stage"
    Config: ClassVar[type[BaseModel]] = NoConfig
    writes: ClassVar[dict[str, tuple[str, ...]]] = {}
    shardable: ClassVar[bool] = True
    batch_size: ClassVar[int] = 2000
    unit: ClassVar[str] = "rows"
    volatile: ClassVar[frozenset[str]] = frozenset()  # config fields that do not change the output
    # A stage fed by something other than a catalog selection (an LLM backend streaming answers) names the
    # function that replaces the runner's loop, as "module:function" with `execute`'s signature.
    executor: ClassVar[str | None] = None
    # DuckDB's memory_limit while the runner streams the selection and commits the batches (None: the connection's
    # own, 80% of RAM by default): a selection that sorts or joins the whole pending set then spills, not grows.
    # Uncapped, DuckDB kept the sorted pending rows and every block it read: 2.7 GB for structured's selection of
    # 1M products, 8 GB in langid over 5M examples (issue 15).
    duckdb_memory: ClassVar[str | None] = "1GB"
    # Tables whose keys the pending selection guarantees are new, so each batch appends its rows without the
    # anti-join that reads the table's keys (O(rows so far) a batch, O(n^2 / batch) a run: 13% of langid's CPU at
    # 1M products, issue 15). It holds when the selection excludes every key this stage wrote (a killed run's
    # committed batches included), yields each input row once (a run's batches are disjoint: the local executor
    # streams one snapshot, the Ray executor commits each exported shard once), a row's outputs carry keys of that
    # row only, and DuckDB's file lock keeps every other writer out. tests/test_appends.py checks it per stage.
    appends: ClassVar[frozenset[str]] = frozenset()
    # Why a shardable stage must still run on the driver under a distributed executor (None: it need not).
    driver_only: ClassVar[str | None] = None

    def __init__(self, config: BaseModel | dict | None = None, **overrides: Any):
        if config is None:
            config = self.Config(**overrides)
        elif isinstance(config, dict):
            config = self.Config(**{**config, **overrides})
        else:
            if not isinstance(config, self.Config):
                raise TypeError(f"stage {self.name}: config must be {self.Config.__name__}, got "
                                f"{type(config).__name__}")
            if overrides:
                config = self.Config(**{**config.model_dump(), **overrides})
        self.config = config
        self.run_id: str | None = None  # set by the runner before prepare(); every written row carries it

    # -- identity ---------------------------------------------------------------------------------------
    def params(self) -> dict:
        """What determines the output: hashed into `params_hash`, stored on the run record and on rows."""
        return self.config.model_dump(mode="json", exclude=set(self.volatile))

    @property
    def params_hash(self) -> str:
        return params_hash({"stage": self.name, **self.params()})

    # -- the contract -----------------------------------------------------------------------------------
    def select(self, langs: list[str] | None = None) -> Selection:
        """This stage's pending input (not yet processed with these params)."""
        raise NotImplementedError(f"stage {self.name} does not declare its pending selection (`select`)")

    def prepare(self, cat: Catalog) -> None:
        """Read catalog state needed before the first batch (an index of earlier items); do not keep `cat`."""

    def setup(self) -> None:
        """Load models and rules once, before the first batch (not in __init__: building a stage stays cheap)."""

    @abstractmethod
    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """Outputs for one batch of input records: `{table: frame}` for tables in `writes`."""

    def finish(self) -> dict[str, pl.DataFrame]:
        """A global stage's last outputs, after every batch (written in one more transaction)."""
        return {}

    def write(self, con: duckdb.DuckDBPyConnection, outputs: dict[str, pl.DataFrame]) -> dict[str, int]:
        """Write one batch's outputs (inside the runner's transaction); returns rows added per table."""
        added = {}
        for table, frame in outputs.items():
            if table not in self.writes:
                raise RuntimeError(f"stage {self.name} returned rows for {table!r}, which it does not declare in "
                                   f"`writes` ({', '.join(self.writes) or 'nothing'})")
            added[table] = insert_frame(con, table, frame, list(self.writes[table]), new_keys=table in self.appends)
        return added

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict[str, Any]:
        """Counts to add to the run summary for one batch (summed by the runner), e.g. reject reasons."""
        return {}

    # -- files `prepare` left on the driver's disk ---------------------------------------------------------
    def files(self) -> dict[str, list[str]]:
        """The files on this machine that `process` reads (what `prepare` wrote), in units that a batch reads
        whole: {unit: [paths]}. An executor that runs `process` on other machines ships them (through Ray's
        object store) and hands the stage's copy there a `fetch` (`use_files`). Default: none, the stage's state
        travels with it when it is pickled."""
        return {}

    def use_files(self, fetch: Callable[[str], dict[str, str]]) -> None:
        """On a worker: `fetch(unit)` copies a unit of `files` here on its first call and returns {file name:
        local path}; the stage reads its files through it instead of the driver's paths."""
        raise NotImplementedError(f"stage {self.name} names files in `files` but cannot read them elsewhere")


Writer = Callable[[duckdb.DuckDBPyConnection, pl.DataFrame], int]


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pl.DataFrame, key: list[str], *,
                 new_keys: bool = False) -> int:
    """Bulk insert `frame` into `table`, skipping rows whose `key` already exists; returns rows added.

    (compass.catalog.writes.insert_rows: the count comes from the INSERT itself, not two count(*) of the table;
    `new_keys`: the caller guarantees the keys are new, see `Stage.appends`.)"""
    from compass.catalog.writes import insert_rows

    return insert_rows(con, table, frame, list(key), new_keys=new_keys)


def drive(cat: Catalog, stage: Any, pending: pl.DataFrame, write: Writer, batch_size: int = 2000,
          desc: str | None = None, progress: bool = True) -> int:
    """Legacy loop (a frame in memory, one writer); stages move to `compass.run.run` one by one."""
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
