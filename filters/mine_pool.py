"""Candidate pools for mining, and the per-task rules that say what a candidate is and when it is refused.

A pool (`Pool`) is the distinct candidate texts of one (language, task, market) key, numbered in the order of
their text hash, with everything the guards need, read once by the mining stage's `prepare` (no connection is
kept) and parked in a file (`park_pool`) until the stage's batches reach it: the embeddings in a read-only
memory-mapped file (the search streams it in chunks, so the page cache, not the process, holds a large pool),
and per text its hashed normalised form and shingles, its classes, its dedup clusters, one kept example whose
positive it is, and its source; and the query vectors of the pending anchors mined against it (`Queries`). At a
million texts that is about 200 MB of arrays, plus the texts themselves (Arrow-backed, for the negatives written).

- `--pool positives`: the kept positives of the example's language and task (issue 5's pool);
- `--pool products`: those, plus every product text of the same language and market that the task's rule names
  (titles; category paths for title2category). A text found in both is counted
  as a positive.

`TASK_RULES` is the one place that says, per task, which product fields are candidates, how a candidate
product's class id is derived (comparable with the anchor's class id: the class guard refuses equal ones), and
the default margin and rank window (`--margin` / `--rank-window` left at auto).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
import torch

from compass.catalog.db import Catalog, duckdb_memory, registered
from compass.errors import CompassError
from compass.filters.mine_search import Sets, TextKeys
from compass.filters.mine_vectors import VectorFill, hash_array
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


def pool_sql(key: PoolKey, langs: list[str] | None) -> tuple[str, list]:
    """The pool's distinct texts (h, text, source), ordered by text hash: a text in both sources is a positive."""
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
    return ("SELECT substr(sha256(text), 1, 20) AS h, text, min(source) AS source FROM ("
            + " UNION ALL ".join(parts) + ") GROUP BY text ORDER BY h"), params


@dataclass
class Pool:
    """One pool, read once: position i is the i-th text in text-hash order."""

    key: PoolKey
    hashes: np.ndarray             # (n,) S20, sorted
    texts: pl.Series               # (n,) str
    sources: pl.Series             # (n,) 'positives' | 'products'
    example_ids: pl.Series         # (n,) one kept example whose positive the text is (null: a product text only)
    text_keys: TextKeys            # hashed normalised form and shingles
    classes: Sets                  # class ids and 'tg:<group>' that make the text a positive (ids: class_ids)
    class_ids: dict[str, int]
    clusters: Sets | None          # dedup clusters of the examples whose positive it is (None: dedup never ran)
    emb: np.ndarray                # (n, dim) float32, memory-mapped read-only
    queries: Queries | None = None  # the query vectors of the pending examples mined against it
    ann: str | None = None         # its IVF index file (mine_ann), for a pool of at least --ann-min texts

    def __len__(self) -> int:
        return len(self.hashes)

    def positions(self, hashes: list[str]) -> np.ndarray:
        """Pool position of each text hash (-1: not in the pool)."""
        h = np.array(hashes, dtype="S20")
        pos = np.searchsorted(self.hashes, h)
        ok = pos < len(self.hashes)
        ok[ok] = self.hashes[pos[ok]] == h[ok]
        return np.where(ok, pos, -1).astype(np.int64)

    def chunks(self, size: int, device: str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(ids (nc,), emb (nc, dim)) over the pool, `size` rows at a time (what `stream_topk` consumes)."""
        for s in range(0, len(self), size):
            e = np.array(self.emb[s:s + size])                       # one chunk in memory at a time
            yield torch.arange(s, s + len(e), device=device), torch.from_numpy(e).to(device)


POSITIVES = "_mine_positives"   # the temp table `positive_facts` makes


@contextmanager
def positive_facts(cat: Catalog, memory: str | None = None) -> Iterator[str]:
    """A temp table, per distinct positive text (by the text hash pools use): the class ids and translation groups
    of every example (kept or not) whose positive it is, the first kept one's id, and its examples' dedup
    clusters (NULL when dedup never ran). One scan of `examples` for every pool: each pool used to join
    `examples` and the `positive_clusters` view (a window over dedup_members) on its own texts, two scans of the
    catalog a pool (14% of `mine` at 100k products)."""
    has_clusters = bool(cat.scalar("SELECT count(*) FROM information_schema.tables "
                                   "WHERE table_name = 'positive_clusters'"))
    clusters = ("list(DISTINCT cluster_id) FILTER (WHERE cluster_id IS NOT NULL)" if has_clusters
                else "NULL::VARCHAR[]")
    rows = f"{POSITIVES}_rows"
    try:
        with duckdb_memory(cat, memory):
            # One row per example first (a stream DuckDB can spill), then the lists per text hash in 16 parts by
            # the hash's first hex digit: DuckDB cannot spill the states of list(DISTINCT ...), and grouping all
            # 5M examples of 1M products at once ran out of the 512 MB cap (`mine` failed in `prepare`); there the
            # rows take 9 s and the 16 parts 13 s, in a process that peaks at 721 MB RSS.
            cat.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {rows} AS SELECT substr(sha256(e.positive), 1, 20) AS h, e.class_id, "
                "e.translation_group, e.id, e.id IN (SELECT id FROM kept_examples) AS kept"
                + (", pc.cluster_id FROM examples e LEFT JOIN positive_clusters pc ON pc.example_id = e.id "
                   if has_clusters else " FROM examples e ")
                + "WHERE e.positive IS NOT NULL")
            for i, digit in enumerate("0123456789abcdef"):
                cat.con.execute(
                    (f"CREATE OR REPLACE TEMP TABLE {POSITIVES} AS " if i == 0 else f"INSERT INTO {POSITIVES} ")
                    + "SELECT h, list(DISTINCT class_id) AS classes, list(DISTINCT translation_group) AS groups, "
                    f"min(id) FILTER (WHERE kept) AS ex, {clusters} AS clusters FROM {rows} "
                    "WHERE substr(h, 1, 1) = ? GROUP BY h", [digit])
            cat.con.execute(f"DROP TABLE {rows}")
        yield POSITIVES
    finally:
        cat.con.execute(f"DROP TABLE IF EXISTS {rows}")
        cat.con.execute(f"DROP TABLE IF EXISTS {POSITIVES}")


def load_pool(cat: Catalog, key: PoolKey, langs: list[str] | None, emb_key: str, dim: int, folder: str,
              spaced: set[bool], memory: str | None = None, chunk: int = 16384,
              fill: VectorFill | None = None, facts: str | None = None) -> Pool | None:
    """Read pool `key` (None when it has no text); its embeddings (cache key `emb_key`) must all be cached.

    With `fill`, the pool's vector file is only planned: it reads as zeros until `fill.run` (one scan of the cache
    for every pool planned in it); without, it is filled here. `facts`: the table of `positive_facts`, made for
    every pool at once (without, this pool makes its own)."""
    if facts is None:
        with positive_facts(cat, memory) as made:
            return load_pool(cat, key, langs, emb_key, dim, folder, spaced, memory, chunk, fill, made)
    sql, params = pool_sql(key, langs)
    rows = cat.frame(sql, params)
    n = rows.height
    if not n:
        return None
    hashes = rows["h"].to_numpy().astype("S20")
    texts = rows["text"]
    table = pl.DataFrame({"pos": np.arange(n, dtype=np.int64), "h": rows["h"], "text": texts})
    class_ids: dict[str, int] = {}
    owners, keys = [], []
    example_ids: list[str | None] = [None] * n
    with registered(cat.con, "_mine_pool", table), duckdb_memory(cat, memory):
        # every example (kept or not) whose positive is the text makes it a positive of that class
        for pos, cls, groups, ex in cat.con.execute(
                f"SELECT p.pos, x.classes, x.groups, x.ex FROM _mine_pool p JOIN {facts} x ON x.h = p.h").fetchall():
            for c in [*cls, *(f"tg:{g}" for g in groups if g)]:
                owners.append(pos)
                keys.append(class_ids.setdefault(c, len(class_ids)))
            example_ids[pos] = ex
        if key.kind == "products":
            for pos, c in _product_classes(cat, key):
                owners.append(pos)
                keys.append(class_ids.setdefault(c, len(class_ids)))
        clusters = None
        got = cat.con.execute(f"SELECT p.pos, unnest(x.clusters) FROM _mine_pool p JOIN {facts} x ON x.h = p.h "
                              "WHERE len(x.clusters) > 0").fetchall()
        if got:
            ids: dict[str, int] = {}
            clusters = Sets.from_pairs(np.array([g[0] for g in got], np.int64),
                                       np.array([ids.setdefault(g[1], len(ids)) for g in got], np.int64), n)
    now = fill is None
    fill = fill or VectorFill(dim)
    emb = fill.add(emb_key, hashes, os.path.join(folder, f"pool{len(os.listdir(folder))}.npy"))
    if now:
        fill.run(cat, memory, chunk)
    return Pool(key, hashes, texts, rows["source"], pl.Series(example_ids, dtype=pl.Utf8),
                TextKeys.build(texts.to_list(), spaced),
                Sets.from_pairs(np.array(owners, np.int64), np.array(keys, np.int64), n), class_ids, clusters, emb)


@dataclass
class Queries:
    """The query vectors of a pool's pending examples (their anchors, under the query cache key), read by the
    stage's `prepare` so that its selection carries no vector: DuckDB holds a streamed sort's whole payload in
    memory, and two vectors a row were most of it (1 GB at 100k products)."""

    hashes: np.ndarray     # (n,) S20, sorted
    emb: np.ndarray        # (n, dim) float32, memory-mapped read-only

    def get(self, hashes: list[str]) -> np.ndarray:
        """(len(hashes), dim) float32, a writable copy (torch shares it)."""
        h = np.array(hashes, dtype="S20")
        pos = np.searchsorted(self.hashes, h).clip(max=max(len(self.hashes) - 1, 0))
        if not len(self.hashes) or not (self.hashes[pos] == h).all():
            raise CompassError(f"embedding cache: {int((self.hashes[pos] != h).sum()) if len(self.hashes) else len(h)}"
                               f" of {len(h)} anchors have no query vector: run the encode stage first "
                               "(`compass mine` does)")
        return np.array(self.emb[pos], dtype=np.float32)


def load_queries(cat: Catalog, anchors_sql: str, params: list, query_key: str, dim: int, path: str,
                 chunk: int = 16384, fill: VectorFill | None = None) -> Queries:
    """The cached query vectors of the texts `anchors_sql` (one column of text hashes) selects, into a file
    (planned in `fill` when given, as for `load_pool`)."""
    got = cat.con.execute(f"SELECT DISTINCT h FROM ({anchors_sql}) ORDER BY h", params).to_arrow_table()
    hashes = hash_array(got.column(0))
    now = fill is None
    fill = fill or VectorFill(dim)
    emb = fill.add(query_key, hashes, path)
    if now:
        fill.run(cat, None, chunk)
    return Queries(hashes, emb)


def park_pool(pool: Pool, folder: str) -> str:
    """Write `pool` (its vectors are files already) to a file in `folder`; returns the file to `unpark_pool`.

    The pickle names its other files (vectors, queries, IVF index) by name only, in the same folder, so the
    folder's files can be copied elsewhere and unparked there (`pool_files`: what an executor ships to workers on
    other machines). A small header comes first: `pool_files` reads it without loading the pool."""
    path = os.path.join(folder, f"pool{len(os.listdir(folder))}.pkl")
    q = pool.queries
    files = {"emb": os.path.basename(pool.emb.filename), "queries": None if q is None else os.path.basename(
        q.emb.filename), "ann": None if pool.ann is None else os.path.basename(pool.ann)}
    for name in filter(None, files.values()):
        if not os.path.exists(os.path.join(folder, name)):   # every file of a pool lives in one folder
            raise RuntimeError(f"mine: pool file {name} is not in {folder}")
    with open(path, "wb") as fh:
        pickle.dump(files, fh, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump((replace(pool, emb=None, queries=None, ann=None), None if q is None else q.hashes), fh,
                    protocol=pickle.HIGHEST_PROTOCOL)
    return path


def pool_files(path: str) -> list[str]:
    """The files of a parked pool: `path` (the pickle) first, then the files it names, in its folder."""
    with open(path, "rb") as fh:
        files = pickle.load(fh)
    return [path] + [os.path.join(os.path.dirname(path), name) for name in files.values() if name]


def unpark_pool(path: str) -> Pool:
    folder = os.path.dirname(path)
    with open(path, "rb") as fh:
        files = pickle.load(fh)
        pool, q = pickle.load(fh)
    return replace(pool, emb=np.load(os.path.join(folder, files["emb"]), mmap_mode="r"),
                   queries=None if q is None else Queries(q, np.load(os.path.join(folder, files["queries"]),
                                                                     mmap_mode="r")),
                   ann=files["ann"] and os.path.join(folder, files["ann"]))


def _product_classes(cat: Catalog, key: PoolKey) -> Iterator[tuple[int, str]]:
    """(pool position, class) for each product text: its class under the task's rule (several may share a text)."""
    tasks = [key.task] if key.task != "*" else list({*TASK_RULES, "*"})
    for t in tasks:
        rule = task_rule(t)
        cols = ", ".join(f"pr.{c}" for c in rule.cls_cols)
        cond, params = _where("pr.lang", key.lang, None)
        if key.market != "*":
            cond.append("pr.market = ?")
            params.append(key.market)
        for f in rule.fields:
            sql = (f"SELECT DISTINCT p.pos, {cols} FROM products pr JOIN _mine_pool p ON p.text = pr.{f}"
                   + (f" WHERE {' AND '.join(cond)}" if cond else ""))
            for row in cat.con.execute(sql, params).fetchall():
                yield row[0], rule.cls(dict(zip(rule.cls_cols, row[1:])))
