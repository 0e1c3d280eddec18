"""What the run report reads from the catalog, as plain rows: the funnel, reject reasons with sampled examples,
generation accounting, hard-negative similarities with the guards' refusals, runs.

Every function returns empty data when its stage never ran, never an error: the report says "not run".
"""

from __future__ import annotations

import json
from typing import Any

from compass.catalog.db import Catalog
from compass.filters.base import STAGE_ORDER

# The mining guards as mined_examples counts them (filters/mine_search.GUARDS, kept here as column names so the
# report does not import torch through the mining modules).
GUARDS = ("near_dup", "class", "margin", "rank")
SAMPLES_PER_REASON = 3
SIMILARITY_SAMPLE = 4000  # (negative, positive) score pairs drawn per task for the histograms
# dedup reasons name the example they duplicate: one family per stage and kind, not one reason per example
_FAMILY = ("CASE WHEN d.reason LIKE 'dedup:%_dup_of:%' THEN regexp_replace(d.reason, ':[^:]+$', ':*') "
           "ELSE d.reason END")


def _rank_sql() -> str:
    return "CASE d.stage " + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(STAGE_ORDER)) + " ELSE 99 END"


def stages_run(cat: Catalog) -> list[str]:
    """Filter stages with at least one decision, in pipeline order."""
    have = {r["stage"] for r in cat.query("SELECT DISTINCT stage FROM decisions")}
    return [s for s in STAGE_ORDER if s in have]


def funnel(cat: Catalog) -> list[dict]:
    """Per (lang, task): generated, then the examples left after each filter stage (None: the stage did not run),
    and kept (no enforced decision of any stage, product supersession included, rejected it)."""
    ran = set(stages_run(cat))
    after = ", ".join(
        f"count(*) FILTER (WHERE f.first_reject IS NULL OR f.first_reject > {i}) AS \"{s}\""
        for i, s in enumerate(STAGE_ORDER))
    rows = cat.query(
        f"WITH f AS (SELECT e.id, min(CASE WHEN NOT d.keep AND d.enforced THEN {_rank_sql()} END) AS first_reject "
        "FROM examples e LEFT JOIN decisions d ON d.example_id = e.id GROUP BY e.id), "
        "k AS (SELECT lang, task, count(*) AS kept FROM kept_examples GROUP BY ALL) "
        f"SELECT e.lang, e.task, count(*) AS generated, {after}, any_value(coalesce(k.kept, 0)) AS kept "
        "FROM examples e JOIN f ON f.id = e.id LEFT JOIN k ON k.lang = e.lang AND k.task = e.task "
        "GROUP BY e.lang, e.task ORDER BY e.lang, e.task")
    for r in rows:
        for s in STAGE_ORDER:
            if s not in ran:
                r[s] = None
    return rows


def reject_reasons(cat: Catalog, samples: int = SAMPLES_PER_REASON) -> list[dict]:
    """One row per (stage, reason family): count, languages, and `samples` rejected examples drawn by a fixed
    hash of their id (the same catalog shows the same examples)."""
    rows = cat.query(
        f"SELECT * FROM (SELECT d.stage, {_FAMILY} AS reason, count(DISTINCT e.id) AS count, "
        "list(DISTINCT e.lang ORDER BY e.lang) AS langs FROM decisions d JOIN examples e ON e.id = d.example_id "
        "WHERE NOT d.keep AND d.enforced GROUP BY ALL) d ORDER BY " + _rank_sql() + ", count DESC, reason")
    # a duplicate is shown with the anchor it duplicates (the id its reason names), so a reader can judge it
    picks = cat.query(
        f"SELECT d.stage, {_FAMILY} AS reason, e.id, e.lang, e.task, e.anchor, e.positive, d.reason AS full_reason, "
        "d.score, o.anchor AS duplicate_of FROM decisions d JOIN examples e ON e.id = d.example_id "
        "LEFT JOIN examples o ON d.reason LIKE 'dedup:%_dup_of:%' AND o.id = regexp_extract(d.reason, ':([^:]+)$', 1) "
        "WHERE NOT d.keep AND d.enforced "
        f"QUALIFY row_number() OVER (PARTITION BY d.stage, {_FAMILY} ORDER BY hash(e.id), e.id) <= ?", [samples])
    by_key: dict[tuple, list[dict]] = {}
    for p in picks:
        by_key.setdefault((p.pop("stage"), p.pop("reason")), []).append(p)
    for r in rows:
        r["examples"] = by_key.get((r["stage"], r["reason"]), [])
    return rows


def generation(cat: Catalog) -> dict:
    """LLM requests per (lang, task, persona) cell: requested = valid + rejects + failed; tokens; kept examples and
    kept examples per 1k tokens. Also examples per route and language (the structured route makes no requests)."""
    cells = cat.query(
        "WITH kept AS (SELECT request_id, count(*) AS kept FROM kept_examples WHERE request_id IS NOT NULL "
        "GROUP BY request_id) "
        "SELECT g.lang, g.task, coalesce(g.persona, '-') AS persona, count(*) AS requests, "
        "count(*) FILTER (WHERE g.status = 'ok') AS valid, count(*) FILTER (WHERE g.status = 'reject') AS rejects, "
        "count(*) FILTER (WHERE g.status = 'failed') AS failed, "
        "coalesce(sum(g.prompt_tokens), 0)::BIGINT + coalesce(sum(g.completion_tokens), 0)::BIGINT AS tokens, "
        "coalesce(sum(k.kept), 0)::BIGINT AS kept FROM generations g LEFT JOIN kept k ON k.request_id = g.request_id "
        "GROUP BY ALL ORDER BY ALL")
    for c in cells:
        c["kept_per_1k_tokens"] = round(1000 * c["kept"] / c["tokens"], 2) if c["tokens"] else None
    reasons = cat.query(
        "SELECT status, coalesce(reject_reason, '-') AS reason, count(*) AS count FROM generations "
        "WHERE status <> 'ok' GROUP BY ALL ORDER BY count DESC, reason LIMIT 12")
    routes = cat.query(
        "SELECT e.route, e.lang, count(*) AS examples, count(k.id) AS kept FROM examples e "
        "LEFT JOIN kept_examples k ON k.id = e.id GROUP BY ALL ORDER BY ALL")
    return {"cells": cells, "reasons": reasons, "routes": routes}


def negatives(cat: Catalog, sample: int = SIMILARITY_SAMPLE) -> dict | None:
    """The newest negative set that has negatives: per task, sampled (negative score, positive score) pairs, and
    what the guards refused. None when nothing was mined."""
    sets = cat.query(
        "SELECT s.set_id, s.model, s.params::VARCHAR AS params, s.run_id, s.created_at, "
        "(SELECT count(*) FROM negatives n WHERE n.set_id = s.set_id) AS negatives, "
        "(SELECT count(*) FROM mined_examples m WHERE m.set_id = s.set_id) AS mined "
        "FROM negative_sets s ORDER BY s.created_at DESC, s.set_id")
    if not sets:
        return None
    chosen = next((s for s in sets if s["negatives"]), sets[0])
    sid = chosen["set_id"]
    neg = cat.query(
        "SELECT e.task, n.score FROM negatives n JOIN examples e ON e.id = n.example_id "
        "WHERE n.set_id = ? AND n.score IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY e.task ORDER BY hash(n.example_id, n.rank)) <= ?", [sid, sample])
    # one positive score per example (every negative row repeats it)
    pos = cat.query(
        "SELECT e.task, any_value(n.positive_score) AS score FROM negatives n JOIN examples e ON e.id = n.example_id "
        "WHERE n.set_id = ? AND n.positive_score IS NOT NULL GROUP BY e.task, n.example_id "
        "QUALIFY row_number() OVER (PARTITION BY e.task ORDER BY hash(n.example_id)) <= ?", [sid, sample])
    per_task: dict[str, dict[str, list[float]]] = {}
    for kind, rows in (("negative", neg), ("positive", pos)):
        for p in rows:
            per_task.setdefault(p["task"], {"negative": [], "positive": []})[kind].append(float(p["score"]))
    guards = ", ".join(f"sum(m.refused_{g})::BIGINT AS {g}" for g in GUARDS)
    refusals = cat.query(
        f"SELECT e.task, count(*) AS mined, count(*) FILTER (WHERE m.n_negatives > 0) AS with_negative, "
        f"sum(m.n_negatives)::BIGINT AS negatives, sum(m.n_examined)::BIGINT AS examined, {guards}, "
        "count(*) FILTER (WHERE m.positive_retrieved) AS positive_retrieved "
        "FROM mined_examples m JOIN examples e ON e.id = m.example_id WHERE m.set_id = ? GROUP BY ALL ORDER BY ALL",
        [sid])
    score_stats = cat.query(
        "SELECT e.task, count(*) AS negatives, round(median(n.score), 3) AS median_negative, "
        "round(median(n.positive_score), 3) AS median_positive, "
        "round(avg((n.score >= n.positive_score)::INT), 4) AS share_negative_above_positive "
        "FROM negatives n JOIN examples e ON e.id = n.example_id WHERE n.set_id = ? GROUP BY ALL ORDER BY ALL",
        [sid])
    return {"set": chosen, "sets": sets, "similarity": per_task, "refusals": refusals, "score_stats": score_stats}


def _json(v: Any) -> Any:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def runs(cat: Catalog) -> list[dict]:
    """Every run, oldest first, with its config and summary parsed."""
    rows = cat.query(
        "SELECT id, command, status, compass_version, strftime(started_at, '%Y-%m-%d %H:%M:%S') AS started_at, "
        "round(epoch(finished_at) - epoch(started_at), 1) AS seconds, config::VARCHAR AS config, "
        "summary::VARCHAR AS summary FROM runs ORDER BY started_at, id")
    for r in rows:
        r["config"], r["summary"] = _json(r["config"]), _json(r["summary"])
    return rows


def counts(cat: Catalog) -> dict:
    return {"products": cat.scalar("SELECT count(*) FROM products"),
            "languages": cat.scalar("SELECT count(DISTINCT lang) FROM products"),
            "examples": cat.scalar("SELECT count(*) FROM examples"),
            "kept": cat.scalar("SELECT count(*) FROM kept_examples"),
            "splits": cat.query("SELECT split, count(*) AS examples FROM splits s JOIN kept_examples k "
                                "ON k.id = s.example_id GROUP BY split ORDER BY split")}
