"""`compass stats` section for mining: negatives per set and language, coverage, refusals per guard."""

from __future__ import annotations

from compass.catalog.db import Catalog
from compass.filters.mine_search import GUARDS


def stats_section(cat: Catalog, by: list[str]) -> dict | None:
    if not cat.scalar("SELECT count(*) FROM negative_sets"):
        return None
    # share of kept examples with >= 1 negative, per set and language
    by_lang = cat.query(
        "WITH k AS (SELECT lang, count(*) AS kept FROM kept_examples GROUP BY lang), "
        "n AS (SELECT n.set_id, e.lang, count(*) AS negatives, count(DISTINCT n.example_id) AS with_negative "
        "      FROM negatives n JOIN kept_examples e ON e.id = n.example_id GROUP BY n.set_id, e.lang), "
        "m AS (SELECT set_id, lang, count(*) AS mined FROM mined_examples GROUP BY set_id, lang) "
        "SELECT m.set_id, m.lang, k.kept, m.mined, coalesce(n.negatives, 0) AS negatives, "
        "coalesce(n.with_negative, 0) AS with_negative, "
        "round(coalesce(n.with_negative, 0) / k.kept, 4) AS share_with_negative "
        "FROM m JOIN k ON k.lang = m.lang LEFT JOIN n ON n.set_id = m.set_id AND n.lang = m.lang "
        "ORDER BY m.set_id, m.lang")
    refusals = cat.query(
        "SELECT set_id, lang, sum(n_examined) AS examined, "
        + ", ".join(f"sum(refused_{g}) AS {g}" for g in GUARDS)
        + " FROM mined_examples GROUP BY set_id, lang ORDER BY set_id, lang")
    # where the negatives came from (--pool products adds product texts to the kept positives), per task
    by_pool = cat.query(
        "SELECT n.set_id, e.task, coalesce(n.source, 'positives') AS pool, count(*) AS negatives, "
        "count(DISTINCT n.example_id) AS examples FROM negatives n JOIN examples e ON e.id = n.example_id "
        "GROUP BY ALL ORDER BY ALL")
    by_task = cat.query(
        "SELECT m.set_id, e.task, count(*) AS mined, count(*) FILTER (WHERE m.n_negatives > 0) AS with_negative, "
        "round(avg((m.n_negatives > 0)::INT), 4) AS share_with_negative FROM mined_examples m "
        "JOIN examples e ON e.id = m.example_id GROUP BY ALL ORDER BY ALL")
    sets = cat.query("SELECT s.set_id, s.model, s.created_at, (SELECT count(*) FROM negatives n "
                     "WHERE n.set_id = s.set_id) AS negatives FROM negative_sets s ORDER BY s.created_at")
    return {"negatives": {"sets": sets, "by_lang": by_lang, "by_task": by_task, "by_pool": by_pool,
                          "refusals_per_guard": refusals}}


def latest_negative_set(cat: Catalog) -> str | None:
    """The one rule for "the latest negative set" (training's `--negatives latest`, publishing's `--negatives
    latest`): the newest set holding at least one negative, ties broken by set id; None when no set holds one.

    A set with no negative (every candidate refused, or a run killed before its first batch) is not the latest
    negatives: training on it would fall back to pairs, and publishing it would write empty lists."""
    return cat.scalar("SELECT s.set_id FROM negative_sets s WHERE EXISTS (SELECT 1 FROM negatives n "
                      "WHERE n.set_id = s.set_id) ORDER BY s.created_at DESC, s.set_id LIMIT 1")
