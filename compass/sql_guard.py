"""What `compass sql` runs without `--write`: one statement that only reads.

The catalog is opened read-only, but DuckDB can still write elsewhere from a read-only connection: ATTACH another
database read-write, COPY ... TO / EXPORT DATABASE a file, INSTALL / LOAD an extension (network), SET a global
option, or call a table function with side effects (`enable_logging(storage='file')` writes log files). So the
statement is classified by DuckDB's own parser (`duckdb.extract_statements`, and `json_serialize_sql` for the
functions a SELECT calls) rather than by regexes, and anything but a read is refused with a one-line reason.
Reading local files (read_csv, read_parquet, ...) stays allowed; extensions are neither installed nor
auto-loaded, so a remote URL is refused by DuckDB itself.
"""

from __future__ import annotations

import json
import re

import duckdb

from compass.errors import CompassError

# Table functions that change state or write files even inside a SELECT.
SIDE_EFFECT_FUNCTIONS = {
    "enable_logging", "disable_logging", "truncate_duckdb_logs", "enable_profiling", "disable_profiling",
    "checkpoint", "force_checkpoint", "json_execute_serialized_sql", "python_map_function",
}
READ_TYPES = {duckdb.StatementType.SELECT}
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\s+", re.IGNORECASE)
# Applied to the connection before the user's statement; lock_configuration makes them stick.
LOCKDOWN = ["SET autoinstall_known_extensions = false", "SET autoload_known_extensions = false",
            "SET lock_configuration = true"]


def _first_words(sql: str, n: int = 3) -> str:
    return " ".join(sql.split()[:n])


def _function_names(node) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            out.add(name.lower())
        for v in node.values():
            out |= _function_names(v)
    elif isinstance(node, list):
        for v in node:
            out |= _function_names(v)
    return out


def _check_one(con: duckdb.DuckDBPyConnection, stmt) -> None:
    kind = stmt.type
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN.sub("", stmt.query, count=1)
        if inner == stmt.query:
            raise CompassError(f"SQL: cannot check {_first_words(stmt.query)!r} for writes: add --write to run it")
        return check_read_only(con, inner)
    if kind not in READ_TYPES:
        word = stmt.query.split()[0].upper() if stmt.query.split() else kind.name
        raise CompassError(f"SQL: {word} ({_first_words(stmt.query, 4)}) is not a read-only statement: add --write "
                           "to run it")
    doc = json.loads(con.execute("SELECT json_serialize_sql(?)", [stmt.query]).fetchone()[0])
    if doc.get("error"):
        raise CompassError(f"SQL: cannot check {_first_words(stmt.query)!r} for writes "
                           f"({doc.get('error_message', 'unparsed')}): add --write to run it")
    bad = sorted(_function_names(doc) & SIDE_EFFECT_FUNCTIONS)
    if bad:
        raise CompassError(f"SQL: {bad[0]}() changes state or writes files: add --write to run it")


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise CompassError unless `sql` is exactly one statement that only reads."""
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise CompassError(f"SQL error: {str(e).splitlines()[0]}") from None
    if len(stmts) != 1:
        raise CompassError(f"SQL: {len(stmts)} statements: run one at a time, or add --write to run several")
    _check_one(con, stmts[0])


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    for s in LOCKDOWN:
        con.execute(s)
