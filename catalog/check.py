"""`compass check`: read every byte of every table of a catalog and say which ones are damaged.

DuckDB checks a block's checksum when it reads the block, and a query reads only the columns it needs, so a
damaged block can hide until a later command trips over it. `check` reads every column of every table, which
is the only way to find all damaged blocks; `--salvage NEW` then copies every table that can still be read
in full into a fresh catalog (the damaged file is only read, never changed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import duckdb
import typer

from compass.catalog.db import RECOVERY, Catalog, catalog_path, init_catalog
from compass.cli_common import CatalogOpt
from compass.errors import CompassError


def table_health(cat: Catalog) -> list[dict]:
    """{table, ok, rows, error} for every table, each read in full (every column of every row)."""
    tables = [r[0] for r in cat.con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
        "AND table_type = 'BASE TABLE' ORDER BY table_name").fetchall()]
    out = []
    for t in tables:
        try:
            # hash() of each column forces DuckDB to read (and checksum) every block of the column.
            row = cat.con.execute(f'SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM "{t}"').fetchone()
            out.append({"table": t, "ok": True, "rows": int(row[0]), "error": None})
        except duckdb.Error as e:
            out.append({"table": t, "ok": False, "rows": None, "error": str(e).splitlines()[0]})
    return out


def salvage(src: Path, dest: Path, readable: list[str]) -> dict[str, int]:
    """Copy the readable tables of `src` into a new catalog at `dest`; returns rows copied per table."""
    if dest.exists():
        raise CompassError(f"--salvage {dest}: the file exists; give a new path (nothing is overwritten)")
    init_catalog(dest)
    copied = {}
    con = duckdb.connect(str(dest))
    try:
        # ATTACH takes no bound parameters: the path goes in as a quoted SQL string literal.
        con.execute("ATTACH '" + str(src).replace("'", "''") + "' AS damaged (READ_ONLY)")
        have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                          "table_catalog = current_database() AND table_schema = 'main'").fetchall()}
        con.execute("BEGIN TRANSACTION")
        for t in readable:
            if t in have and t != "schema_migrations":
                con.execute(f'INSERT INTO main."{t}" BY NAME SELECT * FROM damaged.main."{t}"')
                copied[t] = con.execute(f'SELECT count(*) FROM main."{t}"').fetchone()[0]
        con.execute("COMMIT")
    finally:
        con.close()
    return copied


def check(
    salvage_to: Annotated[Optional[Path], typer.Option("--salvage", help="Copy every table that can still be "
                                                                         "read into this new catalog file.")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Read every table of the catalog in full and report damaged ones; exits 1 when any is damaged."""
    path = catalog_path(catalog)
    with Catalog(path, read_only=True, migrate=False) as cat:
        health = table_health(cat)
    for h in health:
        typer.echo(f"{h['table']}: ok ({h['rows']} rows)" if h["ok"] else f"{h['table']}: damaged ({h['error']})")
    bad = [h["table"] for h in health if not h["ok"]]
    if salvage_to is not None:
        copied = salvage(path, salvage_to, [h["table"] for h in health if h["ok"]])
        typer.echo(f"salvaged {sum(copied.values())} rows of {len(copied)} tables into {salvage_to}"
                   + (f"; not copied (damaged): {', '.join(bad)}" if bad else ""))
    if bad:
        raise CompassError(f"catalog {path} is damaged: {len(bad)} of {len(health)} tables cannot be read in full "
                           f"({', '.join(bad)}); {RECOVERY}")
    typer.echo(f"catalog {path}: every table reads in full")


def register(app: typer.Typer) -> None:
    app.command()(check)
