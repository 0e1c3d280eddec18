"""Core stats: products and examples per group."""

from __future__ import annotations

from compass.catalog.db import Catalog


def stats_section(cat: Catalog, by: list[str]) -> dict:
    from compass.stats import group_counts

    return {
        "products": {"total": cat.scalar("SELECT count(*) FROM products"),
                     "groups": group_counts(cat, "products", by or ["lang", "market"])},
        "examples": {"total": cat.scalar("SELECT count(*) FROM examples"),
                     "kept": cat.scalar("SELECT count(*) FROM kept_examples"),
                     "groups": group_counts(cat, "examples", by or ["lang", "route", "task"])},
        "runs": cat.query("SELECT command, status, count(*) AS count FROM runs GROUP BY command, status "
                          "ORDER BY command, status"),
    }
