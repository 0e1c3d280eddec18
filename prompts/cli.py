"""`compass prompts list|show|render|lint`: look at the template library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.cli_common import CatalogOpt, LangsOpt, console, print_json, print_table
from compass.errors import CompassError
from compass.langs import parse_langs

prompts_app = typer.Typer(help="The prompt template library (task x persona x language).", no_args_is_help=True)
TemplatesOpt = Annotated[Optional[Path], typer.Option("--templates", help="A templates folder to use instead of "
                                                                         "the bundled one.")]


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _lib(templates: Path | None):
    from compass.prompts.library import bundled_library, load_library

    return load_library(templates) if templates else bundled_library()


def _print_messages(msgs: list[dict]) -> None:
    for m in msgs:
        console.rule(m["role"])
        typer.echo(m["content"])


@prompts_app.command("list")
def list_cmd(
    route: Annotated[str, typer.Option(help="grounded | translate")] = "grounded",
    langs: LangsOpt = None,
    personas: Annotated[Optional[str], typer.Option(help="Comma-separated personas.")] = None,
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    templates: TemplatesOpt = None,
) -> None:
    """Template ids and versions."""
    lib = _lib(templates)
    rows = [{"id": t.id, "version": t.version, "route": t.route, "pair_task": t.task.get("pair_task") or "(source's)"}
            for t in lib.select(route, parse_langs(langs), _csv(personas), _csv(tasks))]
    print_json(rows) if as_json else print_table(rows, title=f"{len(rows)} templates")


@prompts_app.command()
def show(
    template_id: Annotated[str, typer.Argument(help="task/persona/lang, e.g. search_query/budget_shopper/th")],
    compact: Annotated[bool, typer.Option(help="Without the example turns.")] = False,
    templates: TemplatesOpt = None,
) -> None:
    """A template rendered with its sample product, plus its schema and version."""
    t = _lib(templates).get(template_id)
    ctx, src = t.sample_context()
    console.print(f"{t.id} version {t.version} (files: {', '.join(t.files)})", highlight=False)
    _print_messages(t.render(ctx, source_lang=src, compact=compact))
    console.rule("answer schema")
    typer.echo(json.dumps(t.schema, ensure_ascii=False, indent=2))


@prompts_app.command()
def render(
    template_id: Annotated[str, typer.Argument(help="task/persona/lang, e.g. search_query/budget_shopper/th")],
    product: Annotated[Optional[str], typer.Option(help="Product id in the catalog (grounded templates).")] = None,
    example: Annotated[Optional[str], typer.Option(help="Example id in the catalog (translate templates).")] = None,
    compact: Annotated[bool, typer.Option(help="Without the example turns and the description.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the messages as JSON.")] = False,
    catalog: CatalogOpt = None,
    templates: TemplatesOpt = None,
) -> None:
    """The exact messages a request for this template and catalog row would send."""
    from compass.catalog.db import Catalog
    from compass.prompts.library import product_context

    t = _lib(templates).get(template_id)
    with Catalog(catalog, read_only=True) as cat:
        if t.task["context"] == "product":
            if not product:
                raise CompassError(f"{template_id} is grounded on a product: pass --product PRODUCT_ID")
            rows = cat.query("SELECT * FROM products WHERE id = ?", [product])
            if not rows:
                raise CompassError(f"no product {product!r} in {cat.path}: see `compass sql \"SELECT id, title "
                                   "FROM products LIMIT 10\"`")
            msgs = t.render(product_context(rows[0], compact), compact=compact)
        else:
            if not example:
                raise CompassError(f"{template_id} translates an example: pass --example EXAMPLE_ID")
            rows = cat.query("SELECT * FROM examples WHERE id = ?", [example])
            if not rows:
                raise CompassError(f"no example {example!r} in {cat.path}")
            msgs = t.render({"anchor": rows[0]["anchor"], "positive": rows[0]["positive"]},
                            source_lang=rows[0]["lang"], compact=compact)
    print_json(msgs) if as_json else _print_messages(msgs)


@prompts_app.command("lint")
def lint_cmd(
    update_lock: Annotated[bool, typer.Option(help="Record the current version + hash of every file "
                                                   "(after bumping the versions of changed files).")] = False,
    templates: TemplatesOpt = None,
) -> None:
    """Check every template: renders for every language, valid schema, examples match it, versions bumped."""
    from compass.prompts.lint import lint, write_lock

    lib = _lib(templates)
    if update_lock:
        path = write_lock(lib)
        console.print(f"recorded {len(lib.hashes)} files in {path}", highlight=False)
    problems = lint(lib)
    for p in problems:
        typer.echo(p)
    if problems:
        raise CompassError(f"{len(problems)} template problems (listed above)")
    console.print(f"{len(lib.templates)} templates OK ({len(lib.langs)} languages, {len(lib.personas)} personas, "
                  f"{len(lib.tasks)} tasks)", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(prompts_app, name="prompts")
