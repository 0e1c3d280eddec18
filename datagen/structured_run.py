"""The structured route from Python: `structured(cat, config, langs)` runs the `structured` stage under a run
record (lineage), after the checks a user needs (products to build from); the CLI calls it."""

from __future__ import annotations

from compass.catalog.db import Catalog, Run
from compass.datagen.structured import StructuredConfig, StructuredPairs
from compass.errors import CompassError
from compass.runner import RunSummary, execute, run, run_config


def _check_products(cat: Catalog, langs: list[str] | None) -> None:
    where, params = "", []
    if langs:
        where, params = f"WHERE lang IN ({', '.join('?' * len(langs))})", list(langs)
    if not cat.scalar(f"SELECT count(*) FROM products {where}", params):
        raise CompassError("no products to build pairs from" + (f" in {', '.join(langs)}" if langs else "") +
                           ": ingest a product catalog first (`compass ingest FILE --lang .. --market ..`)")


def structured(cat: Catalog, config: StructuredConfig | dict | None = None, langs: list[str] | None = None, *,
               progress: bool = True, **overrides) -> RunSummary:
    """Build structured examples for the pending products of `langs`, under a new `structured` run record."""
    stage = StructuredPairs(config, **overrides)
    _check_products(cat, langs)
    return run(cat, stage, langs=langs, progress=progress)


def run_structured(cat: Catalog, run_id: str, langs: list[str] | None = None, tasks: list[str] | None = None,
                   seed: int = 0, limit: int | None = None, progress: bool = True, shopper: bool = True,
                   rules_dir: str | None = None) -> dict:
    """Inside a run record someone else opened (`run_id`); returns {'products': n, 'new_examples': m}."""
    stage = StructuredPairs(tasks=tasks, seed=seed, limit=limit, shopper=shopper, rules_dir=rules_dir)
    _check_products(cat, langs)
    s = execute(cat, stage, Run(id=run_id, command=stage.name, summary={}), langs=langs, progress=progress)
    return {"products": s.read, "new_examples": s.written.get("examples", 0)}


__all__ = ["structured", "run_structured", "run_config", "StructuredConfig", "StructuredPairs"]
