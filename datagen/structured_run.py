"""Drive the structured route over the catalog's products."""

from __future__ import annotations

import json

import duckdb
import polars as pl

from compass.catalog.db import Catalog
from compass.catalog.ingest_versions import revive_reproduced
from compass.datagen.structured import EXAMPLE_SCHEMA, LEGACY_TASKS, TASKS, StructuredPairs
from compass.errors import CompassError
from compass.stage import drive, insert_frame


def write_structured(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> int:
    """Examples into `examples`, shopper-query lineage into `example_transforms` (same transaction)."""
    new = insert_frame(con, "examples", frame.select(list(EXAMPLE_SCHEMA)), ["id"])
    revive_reproduced(con, frame["id"].to_list())  # built from the current product version: not superseded
    lin = frame.filter(pl.col("transforms").is_not_null())
    if not lin.is_empty():
        parsed = [json.loads(t) for t in lin["transforms"].to_list()]
        side = pl.DataFrame({
            "example_id": lin["id"], "kind": [p["kind"] for p in parsed], "pattern": [p["pattern"] for p in parsed],
            "base": [p["base"] for p in parsed], "rules_hash": [p["rules_hash"] for p in parsed],
            "steps": [json.dumps(p["steps"], ensure_ascii=False) for p in parsed], "run_id": lin["run_id"],
        }, schema={"example_id": pl.Utf8, "kind": pl.Utf8, "pattern": pl.Utf8, "base": pl.Utf8,
                   "rules_hash": pl.Utf8, "steps": pl.Utf8, "run_id": pl.Utf8})
        insert_frame(con, "example_transforms", side, ["example_id"])
    return new


def run_structured(cat: Catalog, run_id: str, langs: list[str] | None = None, tasks: list[str] | None = None,
                   seed: int = 0, limit: int | None = None, progress: bool = True, shopper: bool = True,
                   rules_dir: str | None = None) -> dict:
    """Build structured examples for the products of `langs`; returns {'products': n, 'new_examples': m}."""
    tasks = list(tasks or (TASKS if shopper else LEGACY_TASKS))
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
    stage = StructuredPairs(tuple(tasks), seed=seed, run_id=run_id, shopper=shopper, rules_dir=rules_dir)
    stage.setup(sorted(products["lang"].unique().to_list()))
    new = drive(cat, stage, products, write_structured, batch_size=500, desc="structured pairs", progress=progress)
    return {"products": products.height, "new_examples": new}
