"""The catalog: one DuckDB file that every stage reads from and writes to.

Python API first; the CLI is a thin layer over it. A Catalog owns one connection. Writes happen inside
`transaction()` blocks, so a failing or killed command leaves complete batches and nothing partial (DuckDB
rolls back an uncommitted transaction when the file is next opened).

One writer, many readers. DuckDB lets one process hold a file read-write and nobody else read it meanwhile,
so a reader (`read_only=True`: stats, sql, eval, publish) that finds a writer at work reads a private copy of
the file and its WAL instead: the writer's last committed state, taken while neither file changed, checked
by opening it, and deleted on close. The writer pays nothing (batching and commits are unchanged); the reader
pays one file copy. A writer that finds the file held waits up to $COMPASS_LOCK_WAIT seconds (default 10)
for a short reader to finish. A run left `running` by a killed process is marked `interrupted` by the next
writer: holding the write lock proves no other process is still writing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb

from compass import __version__
from compass.errors import CompassError
from compass.ids import canonical_json

DEFAULT_CATALOG = "compass.duckdb"
_SECRET_KEY = re.compile(r"(key|token|secret|password|passwd|authorization|credential)", re.I)
_URL_CREDS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
# DuckDB's words for a file whose bytes are wrong (truncated, flipped, overwritten), as opposed to a lock or a
# missing file: seen on truncated files, checksum failures in used blocks and overwritten headers.
_DAMAGE = re.compile(r"corrupt|checksum|could not read enough bytes|not a valid duckdb database|"
                     r"invalid (?:database )?header|failed to (?:read|load) (?:block|header)", re.I)
RECOVERY = "see 'Damaged catalog' in the README (`compass check` says which tables can still be read)"
_LIVE_RUNS: set[str] = set()  # ids of runs whose run() block is open in this process


class _Locked(Exception):
    def __init__(self, pid: str | None):
        self.pid = pid


def is_damage(e: BaseException) -> bool:
    """Whether a DuckDB error means the catalog file itself is damaged."""
    return isinstance(e, duckdb.Error) and bool(_DAMAGE.search(str(e)))


def damaged_error(path: Path, e: BaseException) -> CompassError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return CompassError(f"catalog {path} is damaged (DuckDB: {first}): keep a copy of the file, then {RECOVERY}")


def catalog_path(path: str | os.PathLike | None = None) -> Path:
    """--catalog, else $COMPASS_CATALOG, else ./compass.duckdb."""
    return Path(path or os.environ.get("COMPASS_CATALOG") or DEFAULT_CATALOG)


def migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with this compass, in order."""
    folder = resources.files("compass.catalog") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name[:-4], f.read_text(encoding="utf-8")) for f in files]


def scrub(obj: Any) -> Any:
    """Mask secret-named keys and secrets inside strings (URL userinfo and query keys, key shapes, environment
    secret values), so configs can be stored and printed. The rule lives in compass.secrets, shared by every
    place that stores or prints; token counts (max_tokens) and tokenizer settings are not secrets."""
    from compass.secrets import scrub as shared_scrub

    return shared_scrub(obj)


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, data: Any) -> Iterator[str]:
    """Expose an Arrow table or polars frame to SQL as `name` for the block, and always drop it after.

    Bulk joins against the catalog go through here rather than row-by-row parameters.
    """
    con.register(name, data.to_arrow() if hasattr(data, "to_arrow") else data)
    try:
        yield name
    finally:
        con.unregister(name)


CLOSE_MEMORY = "512MB"   # DuckDB's memory_limit for the checkpoint a writer runs when it closes the catalog


@contextlib.contextmanager
def duckdb_memory(cat: Catalog, limit: str | None) -> Iterator[None]:
    """DuckDB's memory_limit set to `limit` for the block, then restored.

    DuckDB keeps the blocks it reads in its buffer pool, up to 80% of RAM by default: streaming a million cached
    vectors (1.5 GB at dimension 384) would leave them all resident. Capped, it evicts them (they are clean,
    on disk), so a process streaming a large table (mining pools, split) stays bounded however large it is.
    """
    if not limit:
        yield
        return
    old = cat.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    cat.con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        cat.con.execute(f"SET memory_limit = '{old}'")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class Run:
    """Lineage of one command: its id goes on every row it writes."""

    id: str
    command: str
    summary: dict


class Catalog:
    """A DuckDB catalog file, migrated to this compass's schema on open."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False, create: bool = False,
                 upto: str | None = None, migrate: bool = True):
        self.path = catalog_path(path)
        self.read_only = read_only
        self._migrate_on_open = migrate   # False: read the file as it is (compass check)
        self.snapshot: Path | None = None     # set when reading a copy because another process is writing
        self.writer_pid: str | None = None
        self.con: duckdb.DuckDBPyConnection | None = None
        if not self.path.exists() and not create:
            raise CompassError(f"no catalog at {self.path}: run `compass init --catalog {self.path}` first "
                               "(or set COMPASS_CATALOG / --catalog to an existing one)")
        if self.path.is_dir():
            raise CompassError(f"catalog {self.path} is a folder: pass --catalog to a catalog file")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(upto)
        except duckdb.Error as e:
            self.close()
            if is_damage(e):
                raise damaged_error(self.path, e) from None
            raise

    def _open(self, upto: str | None) -> None:
        if not self.read_only:
            self.con = self._connect_writer()
            self.migrate(upto)
            self._mark_interrupted()
            return
        try:
            self.con = self._connect(self.path, read_only=True)
        except _Locked as e:
            self.writer_pid = e.pid
            self.con = self._open_snapshot()
        if self._migrate_on_open and self.pending_migrations():
            target = self.snapshot or self.path  # a snapshot is our own copy: upgrade it, not the file
            self.con.close()
            self.con = self._connect_writer() if target == self.path else self._connect(target, read_only=False)
            self.read_only = False  # migrate() writes in a transaction(), which refuses read-only catalogs
            self.migrate(upto)
            self.read_only = True
            self.con.close()
            self.con = self._connect(target, read_only=True)

    # -- connection -------------------------------------------------------------------------------------
    def _connect(self, path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            msg = str(e)
            if is_damage(e):
                raise damaged_error(self.path, e) from None
            if "lock" in msg.lower():
                pid = re.search(r"PID (\d+)", msg)
                raise _Locked(pid.group(1) if pid else None) from None
            raise CompassError(f"cannot open catalog {self.path}: {msg.splitlines()[0]}") from None
        except duckdb.Error as e:
            if is_damage(e):
                raise damaged_error(self.path, e) from None
            raise CompassError(f"{self.path} is not a compass catalog (DuckDB says: {str(e).splitlines()[0]}): "
                               "pass --catalog to a catalog made by `compass init`") from None

    def _connect_writer(self) -> duckdb.DuckDBPyConnection:
        """Read-write connection; waits a little for readers, which hold the file only briefly."""
        wait = float(os.environ.get("COMPASS_LOCK_WAIT", "10"))
        deadline = time.monotonic() + wait
        while True:
            try:
                con = self._connect(self.path, read_only=False)
                # DuckDB checkpoints every 16 MiB of WAL, and each checkpoint rewrites the primary-key indexes
                # whole: O(table) per checkpoint, O(n^2) over a long stage (benchmarks/insert_rows.py). A larger
                # WAL between checkpoints (it is still replayed after a crash, and checkpointed on close) cuts that.
                con.execute("SET checkpoint_threshold = '256MB'")
                return con
            except _Locked as e:
                if time.monotonic() >= deadline:
                    who = f" (PID {e.pid})" if e.pid else ""
                    raise CompassError(f"catalog {self.path} is held by another compass process{who}: wait for "
                                       "it to finish, or point --catalog at another file") from None
                time.sleep(0.2)

    def _open_snapshot(self, attempts: int = 8) -> duckdb.DuckDBPyConnection:
        """Copy the catalog, then its WAL, and open the copy read-only.

        Commits only append to the WAL; the file itself changes at checkpoints (and for large appends). So the
        copy is consistent when the file's (size, mtime) are the same before and after both copies, and it
        was not written in the last 20 ms (mtime has a coarse clock: a write in the same tick as the one
        before it would not move it). The WAL may grow while it is copied: opening the copy replays it up
        to its last complete commit, as after a crash, and that open is the final check.
        """
        folder = Path(tempfile.mkdtemp(prefix="compass-snapshot-"))
        snap, wal, snap_wal = folder / self.path.name, _wal(self.path), _wal(folder / self.path.name)
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                before = _stamp(self.path)
                if time.time_ns() - before[1] < 20_000_000:
                    time.sleep(0.02)  # written in the last 20 ms: let the clock tick past it
                    before = _stamp(self.path)
                shutil.copyfile(self.path, snap)
                snap_wal.unlink(missing_ok=True)
                with contextlib.suppress(FileNotFoundError):  # a checkpoint removed it: the file changed too
                    shutil.copyfile(wal, snap_wal)
                if _stamp(self.path) == before:
                    con = duckdb.connect(str(snap), read_only=True)
                    con.execute("SELECT count(*) FROM information_schema.tables").fetchone()
                    self.snapshot = snap
                    sys.stderr.write(f"note: catalog {self.path} is being written by another compass process"
                                     f"{f' (PID {self.writer_pid})' if self.writer_pid else ''}: reading a copy "
                                     "of its last committed state\n")
                    return con
            except (OSError, duckdb.Error) as e:  # a torn copy: take it again
                last = e
            time.sleep(min(1.0, 0.05 * 2 ** attempt))
        shutil.rmtree(folder, ignore_errors=True)
        raise CompassError(f"catalog {self.path} is being written by another compass process"
                           f"{f' (PID {self.writer_pid})' if self.writer_pid else ''} and no consistent copy could "
                           f"be taken in {attempts} tries ({last or 'it kept changing'}): retry, or wait for it")

    def close(self) -> None:
        if self.con is not None:
            if not self.read_only:
                # Closing checkpoints the WAL (up to checkpoint_threshold of commits) with DuckDB's own memory
                # limit, 80% of RAM: at 1M products the dedup stage's close took its process from 1.6 to 3.1 GB
                # after every batch had stayed under its cap. A capped CHECKPOINT first leaves close nothing to do.
                with contextlib.suppress(duckdb.Error):
                    self.con.execute(f"SET memory_limit = '{CLOSE_MEMORY}'")
                    self.con.execute("SET enable_progress_bar = false")   # a long checkpoint drew one on stdout
                    self.con.execute("CHECKPOINT")
            with contextlib.suppress(duckdb.Error):
                self.con.close()
            self.con = None
        if self.snapshot is not None:
            shutil.rmtree(self.snapshot.parent, ignore_errors=True)  # our own temporary copy
            self.snapshot = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.con is not None:
            # Ctrl-C can land while DuckDB's threads still run a query: close() would wait for it to finish.
            with contextlib.suppress(Exception):
                self.con.interrupt()
        self.close()
        if exc is not None and is_damage(exc):
            raise damaged_error(self.path, exc) from None

    # -- migrations -------------------------------------------------------------------------------------
    def applied_migrations(self) -> list[str]:
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'").fetchone()[0]
        if not exists:
            return []
        return [r[0] for r in self.con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall()]

    def pending_migrations(self) -> list[str]:
        known = [n for n, _ in migrations()]
        applied = self.applied_migrations()
        self._refuse_newer(applied, known)
        return [n for n in known if n not in applied]

    def _refuse_newer(self, applied: list[str], known: list[str]) -> None:
        unknown = [n for n in applied if n not in known]
        if unknown:
            raise CompassError(f"catalog {self.path} was written by a newer compass (unknown migration "
                               f"{unknown[0]!r}): upgrade compass (`pip install -U compass-embed`) to open it")

    def migrate(self, upto: str | None = None) -> list[str]:
        """Apply pending migrations in one transaction; returns their names."""
        known = migrations()
        applied = set(self.applied_migrations())
        self._refuse_newer(sorted(applied), [n for n, _ in known])
        todo = [(n, sql) for n, sql in known if n not in applied]
        if upto is not None:
            todo = [(n, sql) for n, sql in todo if n <= upto]
        if not todo:
            return []
        with self.transaction():
            self.con.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                             "(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
            for name, sql in todo:
                self.con.execute(sql)
                self.con.execute("INSERT INTO schema_migrations VALUES (?, ?)", [name, _now()])
        return [n for n, _ in todo]

    # -- transactions and runs ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT, rolled back on any exception (and by DuckDB itself if the process dies)."""
        if self.read_only:
            raise CompassError(f"catalog {self.path} is open read-only: this needs a writable catalog "
                               "(for `compass sql`, add --write)")
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    @contextlib.contextmanager
    def run(self, command: str, config: dict | None = None) -> Iterator[Run]:
        """Record a command as a run: 'running' at start, 'ok' or 'failed' at the end, with its summary.

        The run row is committed on its own, before the work, so rows written by complete batches of a killed
        run still point at a run that exists.
        """
        run = Run(id=f"run-{_now():%Y%m%d%H%M%S}-{secrets.token_hex(3)}", command=command, summary={})
        with self.transaction() as con:
            con.execute("INSERT INTO runs (id, command, config, compass_version, started_at, status) "
                        "VALUES (?, ?, ?, ?, ?, 'running')",
                        [run.id, command, canonical_json(scrub(config or {})), __version__, _now()])
        _LIVE_RUNS.add(run.id)
        status = "failed"
        try:
            yield run
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            _LIVE_RUNS.discard(run.id)
            with contextlib.suppress(Exception):
                with self.transaction() as con:
                    con.execute("UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                                [_now(), status, canonical_json(scrub(run.summary)), run.id])

    def _mark_interrupted(self) -> None:
        """Runs left `running` by a process that died: we hold the write lock, so no other process runs them."""
        if not self.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'runs'"):
            return
        live = sorted(_LIVE_RUNS)  # this process's own open runs (a second Catalog on the same file)
        where = "status = 'running' AND NOT list_contains(?::VARCHAR[], id)"
        if self.scalar(f"SELECT count(*) FROM runs WHERE {where}", [live]):
            with self.transaction() as con:
                con.execute(f"UPDATE runs SET status = 'interrupted' WHERE {where}", [live])

    # -- small helpers --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _damage_is_one_line(self) -> Iterator[None]:
        try:
            yield
        except duckdb.Error as e:
            if is_damage(e):
                raise damaged_error(self.path, e) from None
            raise

    def query(self, sql: str, params: list | None = None) -> list[dict]:
        with self._damage_is_one_line():
            cur = self.con.execute(sql, params or [])
            cols = [d[0] for d in cur.description] if cur.description else []
            return [dict(zip(cols, row)) for row in cur.fetchall()]

    def frame(self, sql: str, params: list | None = None):
        """Query result as a polars DataFrame."""
        with self._damage_is_one_line():
            return self.con.execute(sql, params or []).pl()

    def scalar(self, sql: str, params: list | None = None) -> Any:
        with self._damage_is_one_line():
            row = self.con.execute(sql, params or []).fetchone()
            return row[0] if row else None

    def schema(self) -> list[tuple]:
        """(table, column, type) of every user table and view, for comparing catalogs."""
        return self.con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of the catalog file: equal stamps, unchanged file."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def init_catalog(path: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """Create (or upgrade) a catalog; returns its path and the migrations applied now."""
    p = catalog_path(path)
    with Catalog(p, create=True, upto="") as cat:  # open without migrating, then migrate to report names
        applied = cat.migrate()
    return p, applied
