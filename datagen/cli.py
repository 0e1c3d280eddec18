"""`compass generate`: the three routes into the catalog."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console
from compass.errors import CompassError
from compass.langs import parse_langs


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def generate(
    route: Annotated[str, typer.Option(help="grounded (LLM on product context) | translate (LLM) | "
                                            "structured (no LLM, from product fields).")] = "structured",
    langs: LangsOpt = None,
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks (default: all of the route's).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Structured: at most N products; LLM routes: N requests "
                                                        "spread over the grid.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    catalog: CatalogOpt = None,
) -> None:
    """Turn products into training pairs (anchor, positive, task, class id) in the catalog."""
    if route != "structured":
        raise CompassError(f"--route {route!r}: unknown route: use structured, grounded or translate")
    from compass.datagen.structured_run import run_structured

    lang_list = parse_langs(langs)
    with Catalog(catalog) as cat, cat.run("generate", {"route": route, "langs": lang_list, "tasks": tasks,
                                                       "n": n, "seed": seed}) as run:
        res = run_structured(cat, run.id, lang_list, _csv(tasks), seed=seed, limit=n)
        run.summary.update(res)
    console.print(f"structured route: {res['new_examples']} new examples from {res['products']} products")


def register(app: typer.Typer) -> None:
    app.command()(generate)
