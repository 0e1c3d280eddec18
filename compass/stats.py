"""`compass stats`: corpus statistics as sections; each stage contributes its own.

A section is a function (catalog, by) -> dict | None living in a package's `stats.py`; this module imports
those that exist, so a stage adds its funnel without touching the core.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from compass.catalog.db import Catalog
from compass.errors import CompassError

SECTION_MODULES = [
    "compass.catalog.stats",
    "compass.datagen.stats",
    "compass.filters.stats",
    "compass.filters.mine_stats",
    "compass.train.stats",
]
GROUPABLE = {
    "products": ["lang", "market", "currency", "category"],
    "examples": ["lang", "market", "route", "task", "persona"],
}


def group_counts(cat: Catalog, table: str, by: list[str]) -> list[dict]:
    """Counts of `table` grouped by the `by` columns it has (names checked against a whitelist)."""
    cols = [c for c in by if c in GROUPABLE.get(table, [])]
    if not cols:
        return [{"count": cat.scalar(f"SELECT count(*) FROM {table}")}]
    sel = ", ".join(cols)
    return cat.query(f"SELECT {sel}, count(*) AS count FROM {table} GROUP BY {sel} ORDER BY {sel}")


def validate_by(by: list[str]) -> list[str]:
    known = sorted({c for cols in GROUPABLE.values() for c in cols})
    bad = [c for c in by if c not in known]
    if bad:
        raise CompassError(f"--by {bad[0]!r}: not a groupable column; use any of {', '.join(known)}")
    return by


def sections() -> list[Callable[[Catalog, list[str]], dict | None]]:
    out = []
    for name in SECTION_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        out.append(mod.stats_section)
    return out


def collect(cat: Catalog, by: list[str]) -> dict:
    """{section name: section dict} over every registered section."""
    validate_by(by)
    result: dict = {}
    for fn in sections():
        sec = fn(cat, by)
        if sec:
            result.update(sec)
    return result
