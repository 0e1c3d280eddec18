"""Options and output helpers every command module shares."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

CatalogOpt = Annotated[
    Optional[Path],
    typer.Option("--catalog", envvar="COMPASS_CATALOG", show_default=False,
                 help="Catalog file (default: ./compass.duckdb, or $COMPASS_CATALOG)."),
]
LangsOpt = Annotated[Optional[str], typer.Option("--langs", help="Comma-separated languages, e.g. th,vi (default: all).")]

# Not a terminal (a pipe, a log, CI): rich would assume 80 columns and squeeze tables into ellipses.
_WIDTH = None if sys.stdout.isatty() else 200
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)  # progress and tables for people go to stderr; data (--json, --csv) to stdout


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def print_table(rows: list[dict], title: str | None = None) -> None:
    """A rich table of dict rows, on stdout (it is the command's answer)."""
    out = Console(width=_WIDTH)
    if not rows:
        out.print(f"[bold]{title}[/]: (none)" if title else "(no rows)")
        return
    t = Table(title=title, title_justify="left")
    for k in rows[0]:
        t.add_column(str(k), justify="right" if isinstance(rows[0][k], (int, float)) else "left")
    for r in rows:
        t.add_row(*["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r.values()])
    out.print(t)
