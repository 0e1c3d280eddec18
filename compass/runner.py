"""The one runner: `compass.run(catalog, stage, config) -> RunSummary`.

It owns what every stage would otherwise re-implement (and what used to live in CLI code):
- the run record (lineage: command = stage name, config = params + params hash, version, times, summary);
- the pending selection, streamed from DuckDB in Arrow record batches of `stage.batch_size` rows, so no stage
  materializes a whole table in Python, whatever the catalog size;
- one transaction per batch (a killed run keeps its complete batches; rerunning resumes after them);
- the progress bar and the summary (rows read, rows added per table, the stage's own counts).

The CLI, notebooks, `compass run RECIPE` and a distributed executor all call `run` (or `execute`, inside a run
record someone else opened, for commands that run several stages under one record, like `compass filter`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl
from pydantic import BaseModel
from tqdm.auto import tqdm

from compass.catalog.db import Catalog, Run, duckdb_memory
from compass.stage import Stage


@dataclass
class RunSummary:
    run_id: str | None
    stage: str
    params_hash: str
    read: int = 0                                    # input rows processed
    written: dict[str, int] = field(default_factory=dict)  # rows added per table
    info: dict[str, Any] = field(default_factory=dict)     # the stage's own counts (reject reasons, ...)
    seconds: float = 0.0
    nothing_to_do: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        if self.nothing_to_do:
            return f"{self.stage}: nothing to do (every input already processed with these parameters)"
        added = ", ".join(f"{n} {t}" for t, n in self.written.items()) or "nothing"
        return f"{self.stage}: {self.read} read, added {added} in {self.seconds:.1f} s"


def build_stage(stage: Stage | str | type[Stage], config: BaseModel | dict | None = None, **overrides: Any) -> Stage:
    """A stage instance from an instance, a class or a registered name (see compass.registry.stages)."""
    if isinstance(stage, Stage):
        if config is not None or overrides:
            raise TypeError("pass a config with a stage name or class, not with a built stage")
        return stage
    if isinstance(stage, str):
        from compass.registry import stages

        stage = stages.get(stage)
    return stage(config, **overrides)


def run_config(stage: Stage, langs: list[str] | None = None) -> dict[str, Any]:
    """What the run record stores: enough to tell whether a later run would do the same work."""
    return {"stage": stage.name, "params": stage.params(), "params_hash": stage.params_hash, "langs": langs}


EXECUTORS = ("local", "ray")
# What `execute` uses when its caller names no executor: `compass run --executor ray` sets it for the commands a
# recipe calls (they reach the runner through their own code, which knows nothing of executors).
# COMPASS_EXECUTOR / COMPASS_RAY_ADDRESS set it for a whole process (benchmarks drive commands in subprocesses).
_default: dict[str, str | None] = {"executor": os.environ.get("COMPASS_EXECUTOR") or "local",
                                   "address": os.environ.get("COMPASS_RAY_ADDRESS") or None}


def _check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        from compass.errors import CompassError

        raise CompassError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")


@contextlib.contextmanager
def use_executor(executor: str = "local", address: str | None = None) -> Iterator[None]:
    """Inside the block, `execute` runs shardable stages on `executor` ('ray': at Ray `address`) by default."""
    _check_executor(executor)
    before = dict(_default)
    _default.update(executor=executor, address=address)
    try:
        yield
    finally:
        _default.update(before)


def run(catalog: Catalog | str | os.PathLike | None, stage: Stage | str | type[Stage],
        config: BaseModel | dict | None = None, *, langs: list[str] | None = None, progress: bool = True,
        executor: str | None = None, address: str | None = None, **overrides: Any) -> RunSummary:
    """Run `stage` over its pending input in `catalog`, under a new run record; returns what it did.

    `executor="ray"` runs a shardable stage as Ray Data tasks (compass.ray_executor; `address`: the cluster,
    None for the one already connected or a new local one); the catalog is written by this process only."""
    st = build_stage(stage, config, **overrides)
    if executor is not None:
        _check_executor(executor)
    owned = not isinstance(catalog, Catalog)
    cat = Catalog(catalog) if owned else catalog
    try:
        with cat.run(st.name, run_config(st, langs)) as rec:
            summary = execute(cat, st, rec, langs=langs, progress=progress, executor=executor, address=address)
            rec.summary.update(summary.as_dict())
        return summary
    finally:
        if owned:
            cat.close()


def execute(cat: Catalog, stage: Stage, rec: Run | None, *, langs: list[str] | None = None,
            progress: bool = True, executor: str | None = None, address: str | None = None) -> RunSummary:
    """Run `stage` inside an open run record `rec` (None: rows carry no run id, for tests and benchmarks)."""
    if executor is None:
        executor, address = _default["executor"], address or _default["address"]
    _check_executor(executor)
    if executor == "ray":
        from compass.ray_executor import require_ray

        require_ray()
    if stage.executor:
        import importlib

        target, kw = stage.executor, {}
        if executor == "ray":
            # A stage with its own loop may name a Ray variant of it (LLM generation: compass.datagen.llm_ray).
            if getattr(stage, "ray_executor", None):
                target, kw = stage.ray_executor, {"address": address}
            else:
                print(f"stage {stage.name} has its own executor ({stage.executor}): running on the driver",
                      file=sys.stderr, flush=True)
        mod, fn = target.split(":")
        return getattr(importlib.import_module(mod), fn)(cat, stage, rec, langs=langs, progress=progress, **kw)
    t0 = time.perf_counter()
    stage.run_id = rec.id if rec is not None else None
    summary = RunSummary(rec.id if rec is not None else None, stage.name, stage.params_hash)
    sel = stage.select(langs)
    # DuckDB's cap from the first query on: the count of a DISTINCT or sorted selection builds the same hash tables
    # as the selection itself (mine's count of distinct texts at 1M products: 4.6 GB uncapped, 1.2 GB capped).
    with duckdb_memory(cat, stage.duckdb_memory):   # the selection's sorts and joins spill past it
        total = int(cat.scalar(sel.total, sel.params)) if sel.total else None
        if total == 0:
            summary.nothing_to_do = True
            return summary
        stage.prepare(cat)
        if executor == "ray":
            from compass.ray_executor import execute_ray

            if execute_ray(cat, stage, sel, summary, progress=progress, address=address):
                summary.nothing_to_do = summary.read == 0
                summary.seconds = round(time.perf_counter() - t0, 3)
                return summary
        stage.setup()
        _stream(cat, stage, sel, summary, total, progress)
    summary.nothing_to_do = summary.read == 0
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def _stream(cat: Catalog, stage: Stage, sel, summary: RunSummary, total: int | None, progress: bool) -> None:
    """The local executor's loop: the selection in `batch_size` batches, each batch's outputs one transaction."""
    # A second connection to the same database streams the selection while the first commits each batch: DuckDB's
    # MVCC gives the reader the snapshot it started with, so what this run writes never reappears as pending.
    reader = cat.con.cursor()
    bar = tqdm(total=total, desc=stage.name, unit=stage.unit, disable=not progress, leave=False)
    try:
        batches = reader.execute(sel.sql, sel.params).to_arrow_reader(stage.batch_size)
        for rb in batches:
            batch = pl.from_arrow(rb)
            if not isinstance(batch, pl.DataFrame) or batch.is_empty():
                continue
            commit(cat, stage, stage.process(batch), summary)
            summary.read += batch.height
            bar.update(batch.height)
        commit(cat, stage, stage.finish(), summary)
    finally:
        bar.close()
        reader.close()


def commit(cat: Catalog, stage: Stage, outputs: dict[str, pl.DataFrame], summary: RunSummary) -> None:
    if not outputs:
        return
    with cat.transaction() as con:
        added = stage.write(con, outputs)
    for table, n in added.items():
        summary.written[table] = summary.written.get(table, 0) + int(n)
    _add_counts(summary.info, stage.summarize(outputs))


def _add_counts(into: dict, more: dict) -> None:
    """Sum nested count dicts ({'rejected': 3, 'reasons': {'quality:short': 2}})."""
    for k, v in more.items():
        if isinstance(v, dict):
            _add_counts(into.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + v
        else:
            into[k] = v


def finished_run(cat: Catalog, name: str, params_hash: str) -> str | None:
    """Id of the latest successful run of stage `name` with `params_hash`, if any (what `compass run` skips)."""
    row = cat.query("SELECT id FROM runs WHERE command = ? AND status = 'ok' "
                    "AND json_extract_string(config, '$.params_hash') = ? ORDER BY started_at DESC LIMIT 1",
                    [name, params_hash])
    return row[0]["id"] if row else None


def process_shards(stage: Stage, frame: pl.DataFrame, shards: int) -> dict[str, pl.DataFrame]:
    """Outputs of `stage` over `frame` cut into `shards` contiguous pieces, concatenated per table.

    What a distributed executor does with a shardable stage; the contract test compares it with one piece.
    """
    stage.setup()
    size = max(1, -(-frame.height // shards))
    parts: dict[str, list[pl.DataFrame]] = {}
    for start in range(0, frame.height, size):
        for table, out in stage.process(frame.slice(start, size)).items():
            parts.setdefault(table, []).append(out)
    for table, out in stage.finish().items():
        parts.setdefault(table, []).append(out)
    return {t: pl.concat(fs, how="vertical_relaxed") for t, fs in parts.items()}


__all__ = ["RunSummary", "run", "execute", "use_executor", "build_stage", "finished_run", "process_shards"]
