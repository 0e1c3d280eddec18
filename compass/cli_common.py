"""Options and output helpers every command module shares."""

from __future__ import annotations

import functools
import json
import os
import re
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
LangsOpt = Annotated[Optional[str],
                     typer.Option("--langs", help="Comma-separated languages, e.g. th,vi (default: all).")]

# Not a terminal (a pipe, a log, CI): rich would assume 80 columns and squeeze tables into ellipses.
_WIDTH = None if sys.stdout.isatty() else 200


_DEFAULT_IN_HELP = re.compile(r"\s*[\[(]default:?\s+([^\])]+)[\])]", re.IGNORECASE)


def show_defaults(cmd: Any) -> None:
    """Make `--help` show every option's default (click hides a None default; rich would also swallow a
    "[default: ...]" written into the help text as if it were markup). A default described in the help text moves
    into click's `show_default`; an option whose default is None and whose help names none shows "none"."""
    if getattr(cmd, "_compass_defaults", False):
        return
    cmd._compass_defaults = True
    for sub in (getattr(cmd, "commands", None) or {}).values():
        show_defaults(sub)
    for p in getattr(cmd, "params", []):
        if getattr(p, "param_type_name", "") != "option" or p.name == "help" or isinstance(p.show_default, str):
            continue
        m = _DEFAULT_IN_HELP.search(p.help or "")
        if m:
            p.help = re.sub(r"[;,]\s*\)", ")", p.help[:m.start()] + p.help[m.end():]).replace(" .", ".").strip()
            p.show_default = m.group(1).strip()
        elif p.default is None and not p.required and "default" not in (p.help or "").lower() and not p.envvar:
            p.show_default = "none"


def wide_help_when_piped() -> None:
    """`compass X --help | less`, or in CI: typer's rich help would wrap at 80 columns and cut option names
    (`--mini-batch-si…`); give it a wide page instead ($TERMINAL_WIDTH, typer's own setting, still wins)."""
    if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH"):
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = _WIDTH
# Progress and tables for people go to stderr; data (--json, --csv) to stdout.
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)


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


# Import names that differ from their distribution's name.
_IMPORT_TO_DIST = {"sklearn": "scikit-learn", "fasttext": "fasttext-predict", "yaml": "pyyaml"}
_AGGREGATE_EXTRAS = ("all", "test")


@functools.cache
def _extras() -> dict[str, tuple[str, list[str]]]:
    """{normalised distribution name: (its name, [extras that install it])}, from pyproject.toml in a checkout
    (the source of truth), else from the installed package's metadata."""
    reqs: list[tuple[str, str]] = []
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        for extra, deps in data.get("project", {}).get("optional-dependencies", {}).items():
            reqs += [(d, extra) for d in deps]
    else:
        from importlib.metadata import PackageNotFoundError, requires

        try:
            for r in requires("compass-embed") or []:
                m = re.search(r"extra\s*==\s*[\"']([^\"']+)", r)
                if m:
                    reqs.append((r.split(";")[0], m.group(1)))
        except PackageNotFoundError:
            pass
    out: dict[str, tuple[str, list[str]]] = {}
    for req, extra in reqs:
        name = re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0]
        if extra not in _AGGREGATE_EXTRAS and not name.startswith("compass-embed"):
            out.setdefault(_norm(name), (name, []))[1].append(extra)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def missing_extra(module: str | None) -> str | None:
    """For a module that failed to import, the one line that says which extra installs it (None: not ours)."""
    if not module:
        return None
    top = module.split(".")[0]
    dist = _IMPORT_TO_DIST.get(top, top)
    found = _extras().get(_norm(dist))
    if not found:
        return None
    name, extras = found
    return f"this needs {name}, which is not installed: pip install 'compass-embed[{extras[0]}]'"
