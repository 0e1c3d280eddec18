"""The `compass` command: a thin layer over the Python API that turns library errors into one-line messages.

Each subpackage adds its commands through a `register(app)` function in its CLI module; heavy libraries
(torch, vLLM, sentence-transformers) are imported inside the commands so `compass --help` stays instant.
"""

from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.core
from rich.markup import escape

from compass import __version__
from compass.catalog.db import Catalog, init_catalog
from compass.cli_common import (
    CatalogOpt,
    console,
    missing_extra,
    print_json,
    print_table,
    show_defaults,
    wide_help_when_piped,
)
from compass.errors import CompassError


class _Group(typer.core.TyperGroup):
    """The `compass` group: every subcommand it hands out shows its defaults (cli_common.show_defaults)."""

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            show_defaults(cmd)
        return cmd


app = typer.Typer(
    cls=_Group,
    name="compass",
    help="Build multilingual e-commerce embedding models for Southeast Asia, data first.\n\n"
         "Pipeline: init -> ingest -> generate -> filter -> split -> mine -> train -> eval -> merge / export-fp8 "
         "-> publish; `compass run RECIPE.yaml` chains them, skipping finished steps. Everything lives in one "
         "DuckDB catalog (--catalog, default ./compass.duckdb).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMAND_MODULES = [
    "compass.prompts.cli",
    "compass.datagen.cli",
    "compass.filters.cli",
    "compass.filters.mine_cli",
    "compass.train.cli",
    "compass.train.cli_merge",
    "compass.publish_cli",
    "compass.models_cli",
    "compass.catalog.check",
    "compass.report_cli",
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"compass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    pass


@app.command()
def init(catalog: CatalogOpt = None) -> None:
    """Create a catalog (or upgrade an older one in place)."""
    path, applied = init_catalog(catalog)
    if applied:
        console.print(f"catalog {path}: applied {len(applied)} migrations ({', '.join(applied)})")
    else:
        console.print(f"catalog {path}: already up to date")


@app.command()
def ingest(
    files: Annotated[Optional[list[Path]], typer.Argument(help="Product catalog files (jsonl, csv or parquet).",
                                                          show_default=False)] = None,
    lang: Annotated[Optional[str], typer.Option(help="Language of the listings: th, vi, id, ms, fil, my, km, lo, "
                                                     "en.")] = None,
    market: Annotated[Optional[str], typer.Option(help="ISO 3166 market code, e.g. TH, VN, ID, MY, PH.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format",
                                               help="jsonl | csv | parquet (default: from suffix).")] = None,
    on_error: Annotated[str, typer.Option(help="fail: write nothing if any row is bad; skip: write good rows, "
                                               "report bad ones.")] = "fail",
    samples: Annotated[bool, typer.Option("--samples", help="Ingest the bundled sample catalogs (9 languages, "
                                                            "each with its market) instead of FILES.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Ingest product catalog files. Fields: id, title*, category*, attributes, description, price, currency."""
    from compass.catalog.ingest import ingest as ingest_catalog

    with Catalog(catalog) as cat:
        _, results = ingest_catalog(cat, files, lang, market, fmt, on_error, samples)
    for res in results:
        for p in res.problems:
            console.print(f"[yellow]skipped[/] {p}", markup=True, highlight=False)
        skipped = f", {res.problem_count} bad rows skipped" if res.problem_count else ""
        dup = res.rows_valid - res.rows_new - res.rows_changed
        changed = f", {res.rows_changed} changed (new versions; the old ones superseded)" if res.rows_changed \
            else ""
        console.print(f"{res.path}: {res.rows_new} new products{changed} ({dup} already in the catalog{skipped})",
                      highlight=False)


@app.command()
def stats(
    by: Annotated[Optional[str], typer.Option(help="Group by columns, e.g. lang,market or lang,task,route.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Corpus statistics: products, examples, generation accounting, filter funnels, negatives."""
    from compass.stats import collect

    by_cols = [c.strip() for c in by.split(",") if c.strip()] if by else []
    with Catalog(catalog, read_only=True) as cat:
        result = collect(cat, by_cols)
    if as_json:
        print_json(result)
        return
    for name, sec in result.items():
        if isinstance(sec, list):
            print_table(sec, title=name)
        elif isinstance(sec, dict):
            scalars = {k: v for k, v in sec.items() if not isinstance(v, (list, dict))}
            if scalars:
                print_table([scalars], title=name)
            for k, v in sec.items():
                if isinstance(v, list):
                    print_table(v, title=f"{name}: {k}")
                elif isinstance(v, dict):
                    print_table([{"key": kk, "value": vv} for kk, vv in v.items()], title=f"{name}: {k}")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL to run on the catalog (DuckDB dialect).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print rows as CSV.")] = False,
    write: Annotated[bool, typer.Option("--write", help="Allow statements that change the catalog.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Run SQL on the catalog; read-only unless --write."""
    import duckdb

    from compass.sql_guard import check_read_only, lock_down

    with Catalog(catalog, read_only=not write) as cat:
        if not write:  # a read-only catalog alone still lets DuckDB write other files (see sql_guard)
            check_read_only(cat.con, query)
            lock_down(cat.con)
        try:
            rows = cat.query(query)
        except duckdb.Error as e:
            first = str(e).splitlines()[0]
            hint = " (the catalog is read-only here: add --write to change it)" if "read-only" in first else ""
            raise CompassError(f"SQL error: {first}{hint}") from None
    if as_json:
        print_json(rows)
    elif as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")  # csv's default \r\n would end $(...) in \r
        if rows:
            w.writerow(rows[0].keys())
        for r in rows:
            w.writerow([json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v for v in r.values()])
    else:
        print_table(rows)


@app.command("run")
def run_recipe(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML: out, catalog, steps (each `KIND: {options}`), "
                                                "report. See recipes/demo.yaml.", show_default=False)],
    from_step: Annotated[Optional[str], typer.Option("--from", help="Run this step and every step after it "
                                                                     "again; leave earlier ones alone.",
                                                     show_default="the first unfinished step")] = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Run this step again (and so every later "
                                                                       "one); repeatable.",
                                                       show_default="none")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Artefact folder: `{out}` in the recipe.",
                                                show_default="the recipe's `out`")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands the recipe would run now; run "
                                                            "nothing.")] = False,
    catalog: Annotated[Optional[Path], typer.Option("--catalog", help="Catalog file.",
                                                    show_default="the recipe's `catalog`")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local, or ray: shardable stages run as Ray Data "
                                                             "tasks (needs the ray extra).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster: auto (the one `ray start` "
                                                                     "joined) or the head's HOST:PORT.",
                                                   show_default="a new local Ray")] = None,
) -> None:
    """Run a recipe: its steps in order, skipping those already finished with the same parameters."""
    from compass.recipe import run

    run(recipe, out=out, catalog=catalog, from_step=from_step, force=force or [], dry_run=dry_run,
        echo=lambda line: console.print(line, markup=False, highlight=False), executor=executor, address=address)


def _register_modules() -> None:
    """Import each command module and let it add its commands. A module listed here that does not exist is a bug
    (a typo would silently drop its commands), so it fails loudly; command modules import optional libraries
    (torch, openai, ...) inside their commands, so a missing extra never hides a command."""
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name or name.startswith(f"{e.name}."):
                raise ImportError(f"compass.cli: command module {name!r} (in COMMAND_MODULES) does not exist") \
                    from e
            raise
        mod.register(app)


_register_modules()


def _interrupted(exc: BaseException) -> bool:
    """Whether Ctrl-C caused this exception. It surfaces in several shapes: typer turns KeyboardInterrupt into a
    silent exit 130, and DuckDB turns it into RuntimeError('Query interrupted') mid-query. (A custom SIGINT
    handler would be simpler, but DuckDB interrupts a running query only under Python's default handler.)"""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "InterruptException" or (
                isinstance(exc, RuntimeError) and str(exc).startswith("Query interrupted")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def main() -> None:
    wide_help_when_piped()
    try:
        app()
    except CompassError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)
    except ModuleNotFoundError as e:
        line = missing_extra(e.name)
        if line is None:
            raise
        console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)
    except SystemExit as e:
        if e.code in (0, None) or not _interrupted(e):
            raise
    except BaseException as e:
        if not _interrupted(e):
            raise
    else:
        return
    print("interrupted: complete batches are saved; run the same command again to resume", file=sys.stderr)
    sys.exit(130)
