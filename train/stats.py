"""`compass stats` section: split sizes per language (kept examples), and the split policy in force."""

from __future__ import annotations

from dataclasses import asdict

from compass.catalog.db import Catalog


def stats_section(cat: Catalog, by: list[str]) -> dict | None:
    from compass.train.splits import active_policy, split_sizes

    policy = active_policy(cat)
    if policy is None:
        return None
    return {"splits": {**{f"policy_{k}": v for k, v in asdict(policy).items()}, "per_lang": split_sizes(cat)}}
