"""`compass stats` section: the filter funnel (examples -> kept after each stage) and top reject reasons.

Counts are of distinct examples: an example can hold several decisions of one stage (one per params hash, e.g.
leakage checked against two eval sets), and is counted once.
"""

from __future__ import annotations

from compass.catalog.db import Catalog
from compass.filters.base import STAGE_ORDER

FUNNEL_COLS = ("lang", "market", "route", "task", "persona")
_FAMILY = ("CASE WHEN d.reason LIKE 'dedup:%_dup_of:%' "
           "THEN regexp_replace(d.reason, ':[^:]+$', ':*') ELSE d.reason END")


def stats_section(cat: Catalog, by: list[str]) -> dict | None:
    if not cat.scalar("SELECT count(*) FROM decisions"):
        return None
    cols = [c for c in by if c in FUNNEL_COLS] or ["lang"]
    g = ", ".join(f"e.{c}" for c in cols)
    stages = [s for s in STAGE_ORDER if cat.scalar("SELECT count(*) FROM decisions WHERE stage = ?", [s])]
    rank = "CASE d.stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGE_ORDER)) + " ELSE 99 END"
    # first_reject: the pipeline position of the first stage that rejected the example (NULL = kept by all).
    kept_after = ", ".join(
        f"count(*) FILTER (WHERE f.first_reject IS NULL OR f.first_reject > {STAGE_ORDER.index(s)}) AS {s}"
        for s in stages)
    funnel = cat.query(
        f"WITH f AS (SELECT e.id, min(CASE WHEN NOT d.keep AND d.enforced THEN {rank} END) AS first_reject "
        "FROM examples e LEFT JOIN decisions d ON d.example_id = e.id GROUP BY e.id) "
        f"SELECT {g}, count(*) AS examples, {kept_after}, "
        "round(100.0 * count(*) FILTER (WHERE f.first_reject IS NULL) / count(*), 1) AS kept_pct "
        f"FROM examples e JOIN f ON f.id = e.id GROUP BY {g} ORDER BY {g}")
    reasons = cat.query(
        f"SELECT d.stage, {_FAMILY} AS reason, count(DISTINCT d.example_id) AS count FROM decisions d "
        "WHERE NOT d.keep AND d.enforced GROUP BY ALL ORDER BY count DESC, reason LIMIT 15")
    sel = ", ".join(cols)
    by_group = cat.query(
        f"WITH r AS (SELECT DISTINCT e.id, {g}, {_FAMILY} AS reason "
        f"FROM decisions d JOIN examples e ON e.id = d.example_id "
        f"WHERE NOT d.keep AND d.enforced), c AS (SELECT {sel}, reason, count(*) AS count FROM r "
        f"GROUP BY {sel}, reason) SELECT * FROM c QUALIFY row_number() OVER (PARTITION BY {sel} "
        f"ORDER BY count DESC, reason) <= 3 ORDER BY {sel}, count DESC")
    kept_reasons = cat.query(
        "SELECT d.stage, d.reason, count(DISTINCT d.example_id) AS count FROM decisions d WHERE d.keep "
        "AND d.reason <> 'ok' "
        "GROUP BY ALL ORDER BY count DESC LIMIT 10")
    label_only = cat.scalar("SELECT count(DISTINCT example_id) FROM decisions WHERE NOT keep AND NOT enforced")
    sec = {"funnel": funnel, "reject_reasons": reasons, "reject_reasons_by_group": by_group,
           "kept_with_reason": kept_reasons}
    if label_only:
        sec["label_only_rejects"] = label_only
    return {"filters": sec}
