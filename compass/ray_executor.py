"""The Ray Data executor: a shardable stage's batches run on a Ray cluster; the catalog stays with the driver.

`compass.run(cat, stage, config, executor="ray", address=...)` (or `compass run RECIPE --executor ray`) goes
through the same runner as the local executor (run record, pending selection, prepare, summary); only the loop
over batches changes:

1. the driver streams the stage's pending selection in shards of `stage.batch_size` rows (each row tagged with
   its shard and its position, so the order is never lost) into Ray's object store, one Arrow table a shard;
2. `ray.data.from_arrow_refs(shards).map_batches(ShardWorker, ...)`: one actor per CPU, wherever it runs, builds
   the stage once (`setup()`), runs `process` on each shard (a polars frame) and returns every output table as
   Parquet bytes, one row per shard part and table;
3. the driver takes them in shard order and commits each shard in one transaction through `stage.write`
   (idempotent on the keys), as the local executor commits each batch.

Why the object store both ways: DuckDB has one writer (the driver), and the object store reaches every node, so a
cluster needs no filesystem that all nodes share; Parquet keeps each result table's types through the round trip.
The first version wrote the shards as Parquet files and read them with `read_parquet("local://...")`: its read
tasks had to run on the driver's node, where the actors (half a CPU each, packed onto the first node) could hold
every CPU, and a cluster of two 1-CPU nodes hung (tests/test_ray_cluster.py); Ray 2.60 also deprecates
`local://` paths. With nothing else to schedule, an actor now reserves a whole CPU, so a pool of one actor per
CPU spreads over the nodes. A worker killed mid-shard is restarted by Ray (actor restarts and task retries) and
redoes the shard (its lost results are replaced, never doubled); a killed driver resumes from the catalog
(committed shards are no longer pending). The shards of one stage are in the object store together (Ray spills
them to disk past its memory), as the Parquet files were in a temp folder.

A global stage (`shardable = False`: dedup clustering), a stage that cannot be shipped (not picklable after
`prepare`, or naming a reason in `driver_only`: encoding or mining on a GPU) and a stage with its own executor but
no Ray variant of it say so in one line and run on the driver. LLM generation has its own: compass.datagen.llm_ray
(planning and commits on the driver, the requests answered by a Ray actor pool, or by ray.data.llm's vLLM engines
on GPUs). Files a stage reads in `setup` (the fastText model, leakage's eval folders) must exist at the same path
on every node. Files a stage's `prepare` wrote for `process` (mining's pools: texts, guard keys, vectors) are named
by `Stage.files` and travel through the object store too, an object a file; an actor copies a unit into its own
temp folder when a batch first needs it (`FileCopies`).
"""

from __future__ import annotations

import atexit
import io
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.stage import Selection, Stage

EXTRA_HINT = "pip install 'compass-embed[ray]'"
CONNECT_TIMEOUT_S = 5.0
SHARD, ROW = "__compass_shard", "__compass_row"   # added to each exported row; dropped before `process`
ACTOR_CPUS = 1                                       # an actor per CPU (see the docstring)
RESULT_COLUMNS = ("shard", "first", "rows", "table", "parquet")   # one row per shard part and output table
MAX_RETRIES = 3                                      # a killed worker's shard is redone this many times


def _result_schema() -> Any:
    import pyarrow as pa

    return pa.schema(list(zip(RESULT_COLUMNS, (pa.int64(), pa.int64(), pa.int64(), pa.string(), pa.binary()))))


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise CompassError(f"the ray executor needs Ray Data, which is not installed: {EXTRA_HINT}") from None
    return ray


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def connect(address: str | None = None) -> Any:
    """Connect to Ray: the session already open, else `address` ('auto' or the head's 'HOST:PORT'), else
    a new local cluster. An address that does not answer fails in seconds, naming it (ray.init would wait)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address in (None, "", "local"):
        # "local": a new cluster of this machine's cores. Without it ray.init joins the cluster named in Ray's
        # address file, and a file left by a cluster that died (killed, machine rebooted) made it wait forever.
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        return ray
    if "://" in address:
        # Ray Client runs the driver's work on the head node, which cannot read the shards this process writes.
        raise CompassError(f"Ray address {address!r}: Ray Client (ray://) is not supported: run compass on a node "
                           f"of the cluster (`ray start --address HEAD:PORT` there) with --address auto")
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise CompassError(f"Ray address {address!r}: expected HOST:PORT (as `ray start --head` prints) or "
                               f"auto")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise CompassError(f"Ray cluster at {address} does not answer ({e}): start it with `ray start --head` "
                               f"there, or fix --address") from None
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, TimeoutError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompassError(f"Ray cluster at {address} does not answer ({first}): start one with `ray start "
                           f"--head`, or fix --address") from None
    return ray


class FileCopies:
    """An actor's copies of the files a stage's `prepare` left on the driver (`Stage.files`): each unit fetched
    from the object store into the actor's own temp folder on first use. Only the `keep` units used last stay on
    disk: a stage reads a unit when a batch first needs it (mining maps a pool's vectors, and a deleted file stays
    readable through its mapping), and the selection comes ordered by unit, so an actor seldom goes back (a unit
    removed is fetched again). The folder goes when the actor exits (an actor killed outright leaves it behind)."""

    def __init__(self, refs: dict[str, list[tuple[str, Any]]], keep: int = 4):
        self.refs, self.keep = refs, keep
        self.folder = tempfile.mkdtemp(prefix="compass-ray-files-")
        atexit.register(shutil.rmtree, self.folder, True)   # Ray ends a finished pool's actors by a normal exit
        self.local: dict[str, dict[str, str]] = {}   # unit -> {file name: path}, least recently used first
        self.fetched = 0                              # units copied so far (each into a folder of its own)

    def fetch(self, unit: str) -> dict[str, str]:
        import ray

        if unit in self.local:
            self.local[unit] = self.local.pop(unit)    # the most recently used last
        else:
            if unit not in self.refs:
                raise CompassError(f"file unit {unit!r} was not shipped to this worker (the stage's `files` "
                                   "must name every unit `process` reads)")
            folder = os.path.join(self.folder, str(self.fetched))
            os.mkdir(folder)
            self.fetched += 1
            paths = {}
            for name, ref in self.refs[unit]:
                paths[name] = os.path.join(folder, name)
                with open(paths[name], "wb") as fh:
                    fh.write(ray.get(ref))
            self.local[unit] = paths
            for old in list(self.local)[:-self.keep]:
                shutil.rmtree(os.path.dirname(next(iter(self.local.pop(old).values()))), ignore_errors=True)
        return self.local[unit]


class ShardWorker:
    """One per Ray actor: the stage, set up once; each call processes the shards in its batch and returns their
    outputs as Parquet bytes, one row per (shard part, table): they travel back through Ray's object store, so
    no node needs a filesystem the driver sees (a retried task's rows replace the lost ones). `files`: the object
    refs of the files the stage's `prepare` left on the driver, fetched by the stage when it needs them."""

    def __init__(self, stage: Stage, files: dict[str, list[tuple[str, Any]]] | None = None):
        self.stage = stage
        if files:
            self.copies = FileCopies(files)
            self.stage.use_files(self.copies.fetch)
        self.stage.setup()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        frame = pl.from_arrow(batch)
        done: dict[str, list] = {c: [] for c in RESULT_COLUMNS}
        for (shard,), part in frame.group_by(SHARD, maintain_order=True):
            part = part.sort(ROW)
            first = int(part[ROW][0])
            outputs = self.stage.process(part.drop(SHARD, ROW))
            rows = part.height
            for table, out in (outputs or {"": None}).items():   # a part without outputs still counts its rows
                buf = io.BytesIO()
                if out is not None:
                    out.write_parquet(buf)
                for c, v in zip(RESULT_COLUMNS, (int(shard), first, rows, table, buf.getvalue())):
                    done[c].append(v)
                rows = 0
        return pa.table(done, schema=_result_schema())


def export_shards(cat: Catalog, sel: Selection, batch_size: int) -> Iterator[Any]:
    """The selection as Arrow tables of `batch_size` rows, each tagged with its shard and row numbers."""
    import pyarrow as pa

    reader = cat.con.cursor()   # a second connection: the snapshot the selection started with (see runner)
    n, row = 0, 0
    try:
        for rb in reader.execute(sel.sql, sel.params).to_arrow_reader(batch_size):
            if rb.num_rows == 0:
                continue
            t = pa.Table.from_batches([rb])
            t = t.append_column(SHARD, pa.array([n] * rb.num_rows, pa.int64()))
            t = t.append_column(ROW, pa.array(range(row, row + rb.num_rows), pa.int64()))
            yield t
            n, row = n + 1, row + rb.num_rows
    finally:
        reader.close()


def _picklable(stage: Stage) -> str | None:
    import ray.cloudpickle as cp

    try:
        cp.dumps(stage)
    except Exception as e:  # noqa: BLE001 - whatever pickling raises, the answer is "run it on the driver"
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def execute_ray(cat: Catalog, stage: Stage, sel: Selection, summary: Any, *, progress: bool = True,
                address: str | None = None, concurrency: int | None = None) -> bool:
    """Run a prepared stage's batches on Ray and commit them (see the module docstring); False when the stage
    must run on the driver instead (the runner then runs it locally)."""
    from compass.runner import commit

    if not stage.shardable:
        _say(f"stage {stage.name} is global: running on the driver")
        return False
    why = stage.driver_only or _picklable(stage)
    if why:
        _say(f"stage {stage.name} cannot be shipped to Ray workers ({why}): running on the driver")
        return False
    ray = connect(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = True   # results arrive in shard order: commits stream behind them
    # The files `prepare` left on this machine (mining's pools), one object each: actors fetch a unit on first use.
    files = {unit: [(os.path.basename(p), ray.put(Path(p).read_bytes())) for p in paths]
             for unit, paths in stage.files().items()}
    shards = [ray.put(t) for t in export_shards(cat, sel, stage.batch_size)]
    if not shards:
        commit(cat, stage, stage.finish(), summary)
        return True
    cpus = int(ray.cluster_resources().get("CPU", 1))
    pool = concurrency or max(1, min(cpus, len(shards)))
    # One block a shard, so each shard is a task of its own (batch_size=None: a block is a batch).
    ds = ray.data.from_arrow_refs(shards).map_batches(
        ShardWorker, fn_constructor_kwargs={"stage": stage, "files": files}, batch_size=None, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=ACTOR_CPUS,
        # Ray Data's default is unbounded: a stage that kills its worker every time would loop forever.
        max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    del shards   # the dataset holds them now, until the stage ends
    # Results arrive in input order, so a shard is complete once a later one shows up: commit it then (a
    # killed driver keeps every committed shard, as the local executor keeps its batches).
    parts: dict[int, dict[tuple[int, str], bytes]] = {}
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for shard, first, rows, table, data in zip(*(batch[c].to_pylist() for c in RESULT_COLUMNS)):
                parts.setdefault(shard, {})[(first, table)] = data
                summary.read += rows
            for shard in sorted(parts)[:-1]:
                _commit_shard(cat, stage, parts.pop(shard), summary)
    except Exception as e:
        raise _user_error(e) from None
    for shard in sorted(parts):
        _commit_shard(cat, stage, parts[shard], summary)
    commit(cat, stage, stage.finish(), summary)
    return True


def _user_error(e: BaseException) -> BaseException:
    """The stage's own CompassError (one line for the CLI) out of Ray's wrappers; anything else as Ray raised it."""
    seen, cur = set(), e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, CompassError):
            return CompassError(str(cur))
        seen.add(id(cur))
        cur = getattr(cur, "cause", None) or cur.__cause__
    # Ray keeps a worker's exception chain only as the text of its traceback.
    found = re.findall(r"^\s*compass\.errors\.CompassError: (.+)$", str(e), flags=re.M)
    return CompassError(found[-1]) if found else e


def _commit_shard(cat: Catalog, stage: Stage, outputs: dict[tuple[int, str], bytes], summary: Any) -> None:
    """One transaction per shard: its parts' outputs, in input order, through the stage's own `write`."""
    from compass.runner import commit

    tables: dict[str, list[pl.DataFrame]] = {}
    for (_, table), data in sorted(outputs.items()):
        if table:
            tables.setdefault(table, []).append(pl.read_parquet(io.BytesIO(data)))
    commit(cat, stage, {t: pl.concat(fs, how="vertical_relaxed") for t, fs in tables.items()}, summary)


__all__ = ["connect", "execute_ray", "export_shards", "require_ray", "ShardWorker"]
