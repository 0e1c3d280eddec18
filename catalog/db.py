"""The catalog: one DuckDB file that every stage reads from and writes to.

Python API first; the CLI is a thin layer over it. A Catalog owns one connection. Writes happen inside
`transaction()` blocks, so a failing or killed command leaves complete batches and nothing partial (DuckDB
rolls back an uncommitted transaction when the file is next opened).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import duckdb

from compass import __version__
from compass.errors import CompassError
from compass.ids import canonical_json

DEFAULT_CATALOG = "compass.duckdb"
_SECRET_KEY = re.compile(r"(key|token|secret|password|passwd|authorization|credential)", re.I)
_URL_CREDS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


def catalog_path(path: str | os.PathLike | None = None) -> Path:
    """--catalog, else $COMPASS_CATALOG, else ./compass.duckdb."""
    return Path(path or os.environ.get("COMPASS_CATALOG") or DEFAULT_CATALOG)


def migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with this compass, in order."""
    folder = resources.files("compass.catalog") / "migrations"
    files = sorted(f for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(f.name[:-4], f.read_text(encoding="utf-8")) for f in files]


def scrub(obj: Any) -> Any:
    """Drop secret-looking keys and credentials in URLs, so configs can be stored and printed."""
    if isinstance(obj, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) and v else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return _URL_CREDS.sub(r"\g<scheme>***@", obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class Run:
    """Lineage of one command: its id goes on every row it writes."""

    id: str
    command: str
    summary: dict


class Catalog:
    """A DuckDB catalog file, migrated to this compass's schema on open."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False, create: bool = False,
                 upto: str | None = None):
        self.path = catalog_path(path)
        self.read_only = read_only
        if not self.path.exists() and not create:
            raise CompassError(f"no catalog at {self.path}: run `compass init --catalog {self.path}` first "
                               "(or set COMPASS_CATALOG / --catalog to an existing one)")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = self._connect(read_only=False) if (create or not read_only) else self._connect(read_only=True)
        if read_only:
            if self.pending_migrations():
                self.con.close()
                self.con = self._connect(read_only=False)
                self.read_only = False  # migrate() writes in a transaction(), which refuses read-only catalogs
                self.migrate(upto)
                self.read_only = True
                self.con.close()
                self.con = self._connect(read_only=True)
        else:
            self.migrate(upto)

    # -- connection -------------------------------------------------------------------------------------
    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" in msg.lower():
                pid = re.search(r"PID (\d+)", msg)
                who = f" (PID {pid.group(1)})" if pid else ""
                raise CompassError(f"catalog {self.path} is held by another compass process{who}: wait for it "
                                   "to finish, or point --catalog at another file") from None
            raise CompassError(f"cannot open catalog {self.path}: {msg.splitlines()[0]}") from None
        except duckdb.Error as e:
            raise CompassError(f"{self.path} is not a compass catalog (DuckDB says: {str(e).splitlines()[0]}): "
                               "pass --catalog to a catalog made by `compass init`") from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        status = "failed"
        try:
            yield run
            status = "ok"
        finally:
            with contextlib.suppress(Exception):
                with self.transaction() as con:
                    con.execute("UPDATE runs SET finished_at = ?, status = ?, summary = ? WHERE id = ?",
                                [_now(), status, canonical_json(scrub(run.summary)), run.id])

    # -- small helpers --------------------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None) -> list[dict]:
        cur = self.con.execute(sql, params or [])
        cols = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def frame(self, sql: str, params: list | None = None):
        """Query result as a polars DataFrame."""
        return self.con.execute(sql, params or []).pl()

    def scalar(self, sql: str, params: list | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return row[0] if row else None

    def schema(self) -> list[tuple]:
        """(table, column, type) of every user table and view, for comparing catalogs."""
        return self.con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()


def init_catalog(path: str | os.PathLike | None = None) -> tuple[Path, list[str]]:
    """Create (or upgrade) a catalog; returns its path and the migrations applied now."""
    p = catalog_path(path)
    with Catalog(p, create=True, upto="") as cat:  # open without migrating, then migrate to report names
        applied = cat.migrate()
    return p, applied
