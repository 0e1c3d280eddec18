"""Candidate pools for mining, and the per-task rules that say what a candidate is and when it is refused.

A pool is a temporary catalog table `_mine_pool (pos, h, text, source)`: the distinct candidate texts, numbered,
with their text hash (the embedding cache key) and where they come from. It stays in DuckDB, not in Python, so a
pool of a million product titles costs Python nothing until a search retrieves some of them; only the retrieved
candidates' metadata (text, classes, dedup clusters) is read back, one batch of examples at a time.

- `--pool positives`: the kept positives of the example's language and task (issue 5's pool);
- `--pool products`: those, plus every product text of the same language and market that the task's rule names
  (titles; category paths for title2category). A text found in both is counted
  as a positive.

`TASK_RULES` is the one place that says, per task, which product fields are candidates, how a candidate
product's class id is derived (comparable with the anchor's class id: the class guard refuses equal ones), and
the default margin and rank window (`--margin` / `--rank-window` left at auto).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from compass.catalog.db import Catalog, registered
from compass.tasks import category_class, item_class  # the class rules, in one place


@dataclass(frozen=True)
class TaskRule:
    fields: tuple[str, ...]               # product columns whose texts are candidates (--pool products)
    cls: Callable[[dict], str]            # a candidate product's class id
    cls_cols: tuple[str, ...]             # product columns `cls` reads
    margin: float | None                  # default positive-aware margin (None: off)
    rank_window: tuple[int, int]          # default [lo, hi)
    why: str


# Why the label task differs: its candidates are the few dozen category paths of one taxonomy, a closed set whose
# only false negative is the positive's own label (the class guard refuses it). Title -> path scores are low and
# bunched (bundled samples, MiniLM: positive median 0.37, the other paths close below), so a relative margin of
# 0.95 refused most candidates, and a window starting at rank 10 leaves nothing when a market has 11 categories
# or fewer: on a real Indonesian catalog every title2category row lost its negative that way. The nearest other
# paths are the hard negatives wanted, so the window starts at 0 and the margin is off.
_ITEM = ("id", "lang", "attributes")
_CAT = ("lang", "category")
DEFAULT_RULE = TaskRule(("title",), item_class, _ITEM, 0.95, (10, 100),
                        "title candidates; class = item (brand+model) or product; the first 10 ranks skipped, "
                        "since unlabelled listings of the same item sit there")
TASK_RULES: dict[str, TaskRule] = {
    "title2category": TaskRule(("category",), category_class, _CAT, None, (0, 100),
                               "category-path candidates, a closed label set: the class guard alone refuses the "
                               "one false negative, so no margin and no skipped ranks"),
    "category_query2title": TaskRule(("title",), category_class, _CAT, 0.95, (0, 100),
                                     "title candidates; class = the category, so every listing of it is "
                                     "refused by class and the nearest other-category titles are kept"),
    # Titles only: the positive column holds titles. With descriptions as candidates too (bundled samples,
    # MiniLM), 82% of desc2title negatives were other products' descriptions, the margin refused 6.8x more
    # candidates, and the share of rows with a negative fell from 98.6% to 80.9%. Add "description" here to
    # mine description negatives.
    "desc2title": TaskRule(("title",), item_class, _ITEM, 0.95, (10, 100),
                           "title candidates (not descriptions: the positive column holds titles); class = item"),
}


def task_rule(task: str) -> TaskRule:
    return TASK_RULES.get(task, DEFAULT_RULE)


def rules_params() -> dict:
    """The table's decisions, for the negative set's identity (a changed default makes a new set)."""
    return {t: {"fields": list(r.fields), "margin": r.margin, "rank_window": list(r.rank_window)}
            for t, r in {**TASK_RULES, "*": DEFAULT_RULE}.items()}


@dataclass(frozen=True)
class PoolKey:
    lang: str      # '*' = every selected language (--cross-lingual)
    task: str      # '*' = every task (--pool-by lang)
    market: str    # '*' = any market; only --pool products uses it
    kind: str      # positives | products

    def label(self) -> str:
        base = f"{self.lang}/{self.task}"
        return base if self.kind == "positives" else f"products:{self.lang}/{self.market}/{self.task}"


def _where(col_lang: str, lang: str, langs: list[str] | None) -> tuple[list[str], list]:
    cond, params = [], []
    if langs:
        cond.append(f"{col_lang} IN ({', '.join('?' * len(langs))})")
        params += list(langs)
    if lang != "*":
        cond.append(f"{col_lang} = ?")
        params.append(lang)
    return cond, params


def build_pool(cat: Catalog, key: PoolKey, langs: list[str] | None) -> int:
    """(Re)create `_mine_pool` for `key`; returns its size."""
    cond, params = _where("lang", key.lang, langs)
    if key.task != "*":
        cond.append("task = ?")
        params.append(key.task)
    parts = [f"SELECT positive AS text, 'positives' AS source FROM kept_examples WHERE {' AND '.join(cond) or 'TRUE'}"]
    if key.kind == "products":
        tasks = [key.task] if key.task != "*" else list({*TASK_RULES, "*"})
        fields = sorted({f for t in tasks for f in task_rule(t).fields})
        pcond, pparams = _where("lang", key.lang, langs)
        if key.market != "*":
            pcond.append("market = ?")
            pparams.append(key.market)
        for f in fields:  # one SELECT per field: an OR in a join or filter would defeat DuckDB's hash paths
            parts.append(f"SELECT {f} AS text, 'products' AS source FROM products "
                         f"WHERE {' AND '.join(pcond + [f'trim(coalesce({f}, ' + repr('') + ')) <> ' + repr('')])}")
            params += pparams
    cat.con.execute(
        "CREATE OR REPLACE TEMP TABLE _mine_pool AS SELECT (row_number() OVER (ORDER BY h)) - 1 AS pos, h, text, "
        "source FROM (SELECT substr(sha256(text), 1, 20) AS h, text, min(source) AS source FROM ("
        + " UNION ALL ".join(parts) + ") GROUP BY text)", params)
    return int(cat.scalar("SELECT count(*) FROM _mine_pool"))


def missing_pool_texts(cat: Catalog, fp: str, limit: int) -> list[str]:
    """Up to `limit` pool texts with no cached embedding under key `fp` (call again after storing them)."""
    return [r[0] for r in cat.con.execute(
        "SELECT p.text FROM _mine_pool p WHERE NOT EXISTS (SELECT 1 FROM embedding_cache c WHERE c.model_fp = ? "
        "AND c.text_hash = p.h) ORDER BY p.pos LIMIT ?", [fp, limit]).fetchall()]


def positions(cat: Catalog, hashes: list[str]) -> np.ndarray:
    """Pool position of each text hash (-1: not in the pool)."""
    tbl = pa.table({"i": pa.array(range(len(hashes)), pa.int64()), "h": pa.array(hashes, pa.string())})
    out = np.full(len(hashes), -1, dtype=np.int64)
    with registered(cat.con, "_mine_ph", tbl):
        for i, pos in cat.con.execute("SELECT q.i, p.pos FROM _mine_ph q JOIN _mine_pool p ON p.h = q.h").fetchall():
            out[i] = pos
    return out


@dataclass
class Candidates:
    """Metadata of the pool texts one batch needs, indexed locally: `local[pos]` -> 0..n-1."""

    local: dict[int, int]
    texts: list[str]
    sources: list[str]
    classes: list[frozenset]             # class ids and 'tg:<group>' that make the text a positive
    example_ids: list[str | None]        # one kept example whose positive it is (None: a product text only)
    clusters: list[frozenset] | None     # dedup clusters of the examples whose positive it is (if dedup ran)


def candidates(cat: Catalog, key: PoolKey, pos: np.ndarray) -> Candidates:
    """Read back the texts at pool positions `pos` and everything the guards need about them."""
    uniq = np.unique(pos[pos >= 0])
    with registered(cat.con, "_mine_ids", pa.table({"pos": pa.array(uniq, pa.int64())})):
        rows = cat.con.execute("SELECT p.pos, p.text, p.source FROM _mine_pool p JOIN _mine_ids i ON i.pos = p.pos "
                               "ORDER BY p.pos").fetchall()
    local = {r[0]: j for j, r in enumerate(rows)}
    texts = [r[1] for r in rows]
    keys: list[set] = [set() for _ in texts]
    ex_ids: list[str | None] = [None] * len(texts)
    clusters = None
    with registered(cat.con, "_mine_texts", pa.table({"j": pa.array(range(len(texts)), pa.int64()),
                                                     "text": pa.array(texts, pa.string())})):
        # every example (kept or not) whose positive is the text makes it a positive of that class
        for j, c, g, ex in cat.con.execute(
                "SELECT t.j, list(DISTINCT e.class_id), list(DISTINCT e.translation_group), min(e.id) FILTER "
                "(WHERE e.id IN (SELECT id FROM kept_examples)) FROM examples e JOIN _mine_texts t ON "
                "t.text = e.positive GROUP BY t.j").fetchall():
            keys[j].update(c)
            keys[j].update(f"tg:{x}" for x in g if x)
            ex_ids[j] = ex
        if key.kind == "products":
            _product_classes(cat, key, keys)
        if cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'positive_clusters'"):
            got = dict(cat.con.execute(
                "SELECT t.j, list(DISTINCT pc.cluster_id) FROM positive_clusters pc JOIN examples e ON "
                "e.id = pc.example_id JOIN _mine_texts t ON t.text = e.positive GROUP BY t.j").fetchall())
            clusters = [frozenset(got.get(j, ())) for j in range(len(texts))] if got else None
    return Candidates(local=local, texts=texts, sources=[r[2] for r in rows],
                      classes=[frozenset(k) for k in keys], example_ids=ex_ids, clusters=clusters)


def _product_classes(cat: Catalog, key: PoolKey, keys: list[set]) -> None:
    """Add, to each text, the class its products have under the task's rule (several products may share it)."""
    tasks = [key.task] if key.task != "*" else list({*TASK_RULES, "*"})
    for t in tasks:
        rule = task_rule(t)
        cols = ", ".join(f"pr.{c}" for c in rule.cls_cols)
        cond, params = _where("pr.lang", key.lang, None)
        if key.market != "*":
            cond.append("pr.market = ?")
            params.append(key.market)
        for f in rule.fields:
            sql = (f"SELECT DISTINCT t.j, {cols} FROM products pr JOIN _mine_texts t ON t.text = pr.{f}"
                   + (f" WHERE {' AND '.join(cond)}" if cond else ""))
            for row in cat.con.execute(sql, params).fetchall():
                keys[row[0]].add(rule.cls(dict(zip(rule.cls_cols, row[1:]))))
