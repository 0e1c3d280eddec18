"""`compass stats` section for generation: examples per language/persona/task/route, and the accounting of
LLM requests: requested = stored valid + stored rejects + failed after retries."""

from __future__ import annotations

from compass.catalog.db import Catalog


def stats_section(cat: Catalog, by: list[str]) -> dict | None:
    from compass.stats import group_counts

    if not cat.scalar("SELECT count(*) FROM examples") and not cat.scalar("SELECT count(*) FROM generations"):
        return None
    out: dict = {"examples_by_group": group_counts(cat, "examples", by or ["route", "lang", "persona", "task"])}
    acc = cat.query(
        "SELECT count(*) AS requested, "
        "count(*) FILTER (WHERE status = 'ok') AS stored_valid, "
        "count(*) FILTER (WHERE status = 'reject') AS stored_rejects, "
        "count(*) FILTER (WHERE status = 'failed') AS failed_after_retries, "
        "coalesce(sum(attempts), 0) AS attempts, "
        "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
        "coalesce(sum(completion_tokens), 0) AS completion_tokens FROM generations")[0]
    out["generation"] = {k: int(v) for k, v in acc.items()}
    if acc["requested"]:
        out["generation_by_route"] = cat.query(
            "SELECT route, backend, count(*) AS requested, count(*) FILTER (WHERE status = 'ok') AS valid, "
            "count(*) FILTER (WHERE status = 'reject') AS rejects, "
            "count(*) FILTER (WHERE status = 'failed') AS failed FROM generations GROUP BY route, backend "
            "ORDER BY route, backend")
        out["generation_reasons"] = cat.query(
            "SELECT status, reject_reason AS reason, count(*) AS count FROM generations "
            "WHERE status <> 'ok' GROUP BY status, reject_reason ORDER BY count DESC, reason LIMIT 20")
    return {"generate": out}
