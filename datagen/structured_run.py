"""Drive the structured route over the catalog's products."""

from __future__ import annotations

from compass.catalog.db import Catalog
from compass.datagen.structured import TASKS, StructuredPairs
from compass.errors import CompassError
from compass.stage import drive, insert_frame


def run_structured(cat: Catalog, run_id: str, langs: list[str] | None = None, tasks: list[str] | None = None,
                   seed: int = 0, limit: int | None = None, progress: bool = True) -> dict:
    """Build structured examples for the products of `langs`; returns {'products': n, 'new_examples': m}."""
    tasks = list(tasks or TASKS)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise CompassError(f"--tasks {bad[0]!r} is not a structured task: use any of {', '.join(TASKS)}")
    where, params = "", []
    if langs:
        where = f"WHERE lang IN ({', '.join('?' * len(langs))})"
        params = list(langs)
    sql = f"SELECT id, lang, market, title, category, attributes, description FROM products {where} ORDER BY id"
    if limit:
        sql += " LIMIT ?"
        params.append(int(limit))
    products = cat.frame(sql, params)
    if products.is_empty():
        raise CompassError("no products to build pairs from" + (f" in {', '.join(langs)}" if langs else "") +
                           ": ingest a product catalog first (`compass ingest FILE --lang .. --market ..`)")
    stage = StructuredPairs(tuple(tasks), seed=seed, run_id=run_id)
    new = drive(cat, stage, products, lambda con, df: insert_frame(con, "examples", df, ["id"]),
                batch_size=500, desc="structured pairs", progress=progress)
    return {"products": products.height, "new_examples": new}
