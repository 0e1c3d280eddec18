"""Hard-negative mining into the catalog: positive-aware, class-aware, incremental.

For every kept example, the candidates are the distinct kept positives of its pool (same language and, by
default, same task: a category path is no useful negative for a query whose positive is a title, and a title
is a harmful one for a title -> category pair). Exact search by chunked matrix products (`mine_search`), then
guards, checked in this order and each counted in `mined_examples`:

- near_dup: the candidate equals the positive (or the anchor) after `compass.text.normalize`, or is a
  near-duplicate of the positive (`compass.text.is_near_duplicate`: word-bigram / char-trigram Jaccard >=
  threshold), or shares its dedup cluster when the dedup stage has clustered positives (`positive_clusters`);
- class: the candidate is the positive of some example sharing the example's class id or translation group
  (a text can be the positive of several examples, so all of them are checked);
- margin: score > pos - |pos| x (1 - margin), i.e. above margin x the positive's score (NV-Retriever
  TopK-PercPos);
- rank: outside the rank window [lo, hi) (ranks from 0, the example's own positive not counted).

The first `per_example` survivors, best first, are stored. A negative set is one (model fingerprint, guard
parameters) pair, its id the params hash; rerunning mines only examples not yet in `mined_examples` for the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from compass.catalog.db import Catalog, registered
from compass.errors import CompassError
from compass.filters.mine_cache import encode_missing, load_embeddings, load_encoder, model_fingerprint, register_model
from compass.filters.mine_search import GUARDS, GuardConfig, NearDup, mine_arrays
from compass.ids import params_hash
from compass.stage import Stage, drive, insert_frame
from compass.text import normalize

MINER_VERSION = 1  # bump when the mining semantics change, so old sets are not extended with new rules


@dataclass
class MineConfig:
    model: str
    langs: list[str] | None = None
    top_k: int = 50                       # candidates retrieved per example (search depth)
    rank_window: tuple[int, int] = (10, 100)
    margin: float | None = 0.95           # None: no positive-aware margin
    per_example: int = 5
    near_dup: float | None = 0.8          # Jaccard threshold; None: exact (normalised) equality only
    class_guard: bool = True
    pool_by: str = "task"                 # task: same lang + task; lang: same lang, any task
    cross_lingual: bool = False           # pool across the selected languages
    batch_size: int = 64                  # encoder batch
    mine_batch: int = 2048                # examples per transaction
    device: str = "cpu"
    progress: bool = True
    block: int = field(default=1 << 26)   # max scores alive at once in the search

    def validate(self) -> None:
        lo, hi = self.rank_window
        if not (0 <= lo < hi):
            raise CompassError(f"--rank-window {lo}:{hi}: need 0 <= lo < hi, e.g. 10:100")
        if lo >= self.top_k:
            raise CompassError(f"--rank-window {lo}:{hi} starts at or past --top-k {self.top_k}: nothing would be "
                               f"eligible; raise --top-k above {lo} or lower the window start")
        if self.margin is not None and not (0 < self.margin <= 1):
            raise CompassError(f"--margin {self.margin}: use a value in (0, 1], e.g. 0.95, or 0 to disable it")
        if self.per_example < 1 or self.top_k < 1:
            raise CompassError("--per-example and --top-k must be at least 1")
        if self.near_dup is not None and not (0 < self.near_dup <= 1):
            raise CompassError(f"--near-dup {self.near_dup}: use a Jaccard threshold in (0, 1], or 0 to disable")
        if self.pool_by not in ("task", "lang"):
            raise CompassError(f"--pool-by {self.pool_by!r}: use task or lang")

    def guard_config(self) -> GuardConfig:
        lo, hi = self.rank_window
        return GuardConfig(depth=self.top_k, lo=lo, hi=hi, margin=self.margin, per_example=self.per_example)

    def set_params(self, model_fp: str) -> dict:
        """What decides the negatives (not langs, batch sizes or device): the negative set's identity."""
        return {"miner": MINER_VERSION, "model_fp": model_fp, "top_k": self.top_k,
                "rank_window": list(self.rank_window), "margin": self.margin, "per_example": self.per_example,
                "near_dup": self.near_dup, "class_guard": self.class_guard, "pool_by": self.pool_by,
                "cross_lingual": self.cross_lingual, "normalize_embeddings": True}


@dataclass
class Pool:
    """One candidate corpus: distinct positive texts, their embeddings and what each text is a positive of."""

    key: str
    texts: list[str]
    emb: np.ndarray                       # (n, d) unit vectors
    classes: list[frozenset]              # per text: class ids and 'tg:<group>' of the examples it is positive of
    example_ids: list[str]                # per text: one kept example whose positive it is
    clusters: list[frozenset] | None = None  # per text: dedup clusters of its examples' positives, if dedup ran
    index: dict = field(default_factory=dict)

    def __post_init__(self):
        self.index = {t: i for i, t in enumerate(self.texts)}


def example_keys(class_id: str, translation_group: str | None) -> frozenset:
    return frozenset([class_id] + ([f"tg:{translation_group}"] if translation_group else []))


class HardNegativeMiner(Stage):
    """Pending examples of one pool in (with `anchor_vec`), `mined_examples` rows out, negatives nested."""

    name = "mine"

    def __init__(self, cfg: MineConfig, set_id: str, run_id: str | None):
        self.cfg, self.set_id, self.run_id = cfg, set_id, run_id
        self.pool: Pool | None = None
        self._near_dup: NearDup | None = None

    def params(self) -> dict:
        return {"set_id": self.set_id}

    def use_pool(self, pool: Pool) -> None:
        self.pool, self._near_dup = pool, NearDup(pool.texts, self.cfg.near_dup, pool.clusters)

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        pool, cfg = self.pool, self.cfg
        q = np.array(batch["anchor_vec"].to_numpy(), dtype=np.float32)            # (b, d), writable for torch
        pos_idx = np.array([pool.index.get(t, -1) for t in batch["positive"]], dtype=np.int64)
        langs = batch["lang"].to_list()
        keys = [example_keys(c, g) for c, g in zip(batch["class_id"], batch["translation_group"])]

        def same_class(r: int, c: int) -> bool:
            return not keys[r].isdisjoint(pool.classes[c])

        anchors = [normalize(a) for a in batch["anchor"]]

        def near_dup(r: int, c: int) -> bool:
            # a copy of the anchor itself is no negative either (possible when pools mix tasks and margin is off)
            return ((pos_idx[r] >= 0 and self._near_dup(int(pos_idx[r]), c, langs[r]))
                    or self._near_dup.normalized(c) == anchors[r])

        mined, pos_score = mine_arrays(q, pool.emb, pos_idx, cfg.guard_config(),
                                       same_class if cfg.class_guard else None, near_dup,
                                       block=cfg.block, device=cfg.device)
        negs: list[list[dict]] = [[] for _ in range(batch.height)]
        for r, rank, c, s in zip(mined.q, mined.rank, mined.cand, mined.score):
            negs[r].append({"rank": int(rank), "negative_text": pool.texts[c],
                            "negative_example_id": pool.example_ids[c], "score": float(s)})
        out = {"set_id": [self.set_id] * batch.height, "example_id": batch["id"].to_list(), "lang": langs,
               "pool": [pool.key] * batch.height, "n_examined": mined.examined.tolist(),
               "n_negatives": [len(n) for n in negs],
               **{f"refused_{g}": mined.refused[g].tolist() for g in GUARDS},
               "positive_retrieved": mined.positive_retrieved.tolist(), "run_id": [self.run_id] * batch.height,
               "positive_score": pos_score.tolist(), "negatives": negs}
        return pl.DataFrame(out, schema_overrides={"negatives": pl.List(pl.Struct({
            "rank": pl.Int64, "negative_text": pl.Utf8, "negative_example_id": pl.Utf8, "score": pl.Float64}))})


MINED_COLS = ["set_id", "example_id", "lang", "pool", "n_examined", "n_negatives", *[f"refused_{g}" for g in GUARDS],
              "positive_retrieved", "run_id"]


def write_mined(con, out: pl.DataFrame) -> int:
    """Negatives and the mined-example markers of one batch (same transaction); returns negatives added."""
    negs = (out.select("set_id", "example_id", "positive_score", "run_id", "negatives")
            .explode("negatives").drop_nulls("negatives").unnest("negatives"))
    added = insert_frame(con, "negatives", negs, ["set_id", "example_id", "rank"])
    insert_frame(con, "mined_examples", out.select(MINED_COLS), ["set_id", "example_id"])
    return added


def _lang_filter(langs: list[str] | None, col: str = "lang") -> tuple[str, list]:
    if not langs:
        return "TRUE", []
    return f"{col} IN ({', '.join('?' * len(langs))})", list(langs)


def _pool_where(cfg: MineConfig, lang: str, task: str) -> tuple[str, list]:
    where, params = _lang_filter(cfg.langs)
    if lang != "*":
        where, params = where + " AND lang = ?", params + [lang]
    if task != "*":
        where, params = where + " AND task = ?", params + [task]
    return where, params


def build_pool(cat: Catalog, cfg: MineConfig, key: tuple[str, str], fp: str, dim: int) -> Pool:
    lang, task = key
    where, params = _pool_where(cfg, lang, task)
    rows = cat.query(f"SELECT positive, min(id) AS example_id FROM kept_examples WHERE {where} "
                     "GROUP BY positive ORDER BY positive", params)
    texts = [r["positive"] for r in rows]
    # class keys from every example (kept or not) whose positive is the text: any of them makes it a positive
    with registered(cat.con, "_mine_texts", pl.DataFrame({"positive": texts})):
        cls = cat.query("SELECT e.positive, list(DISTINCT e.class_id) AS c, list(DISTINCT e.translation_group) AS g "
                        "FROM examples e JOIN _mine_texts t ON t.positive = e.positive GROUP BY e.positive")
        clusters = None
        if cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'positive_clusters'"):
            # the dedup stage's positive clusters (filters issue), when it has run on these examples
            got = {r["positive"]: frozenset(r["c"]) for r in cat.query(
                "SELECT e.positive, list(DISTINCT pc.cluster_id) AS c FROM positive_clusters pc "
                "JOIN examples e ON e.id = pc.example_id JOIN _mine_texts t ON t.positive = e.positive "
                "GROUP BY e.positive")}
            clusters = [got.get(t, frozenset()) for t in texts] if got else None
    by_text = {r["positive"]: frozenset(r["c"] + [f"tg:{g}" for g in r["g"] if g]) for r in cls}
    return Pool(key=f"{lang}/{task}", texts=texts, emb=load_embeddings(cat, fp, texts, dim),
                classes=[by_text.get(t, frozenset()) for t in texts], example_ids=[r["example_id"] for r in rows],
                clusters=clusters)


def mine(cat: Catalog, cfg: MineConfig, run_id: str | None, model=None) -> dict:
    """Mine negatives for the kept examples not yet mined in this set; returns a summary dict."""
    cfg.validate()
    model = model or load_encoder(cfg.model, cfg.device)
    fp = model_fingerprint(model)
    dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
              else model.get_sentence_embedding_dimension())
    set_params = cfg.set_params(fp)
    set_id = params_hash(set_params)
    register_model(cat, fp, cfg.model, dim, run_id)
    with cat.transaction() as con:
        con.execute("INSERT INTO negative_sets (set_id, model, params, run_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING", [set_id, cfg.model, json.dumps(set_params), run_id])
    where, params = _lang_filter(cfg.langs, "k.lang")
    pending = cat.frame(f"SELECT k.id, k.lang, k.task, k.anchor, k.positive, k.class_id, k.translation_group "
                        f"FROM kept_examples k WHERE {where} AND NOT EXISTS (SELECT 1 FROM mined_examples m "
                        f"WHERE m.set_id = ? AND m.example_id = k.id) ORDER BY k.id", params + [set_id])
    summary = {"set_id": set_id, "model_fp": fp, "pending": pending.height, "encoded": 0, "negatives": 0,
               "examples_with_negatives": 0, "refused": {g: 0 for g in GUARDS}}
    if pending.is_empty():
        return summary
    pending = pending.with_columns(pl.concat_str(
        pl.lit("*") if cfg.cross_lingual else pl.col("lang"), pl.lit("\x1f"),
        pl.col("task") if cfg.pool_by == "task" else pl.lit("*")).alias("_pool"))
    keys = sorted(set(pending["_pool"].to_list()))
    pools = [tuple(k.split("\x1f")) for k in keys]
    # encode every text the pools and the pending anchors need that the cache lacks, before any search
    corpus_texts: list[str] = []
    for lang, task in pools:
        w, p = _pool_where(cfg, lang, task)
        corpus_texts += [r[0] for r in cat.con.execute(f"SELECT DISTINCT positive FROM kept_examples WHERE {w}",
                                                       p).fetchall()]
    summary["encoded"] = encode_missing(cat, model, fp, corpus_texts + pending["anchor"].to_list(),
                                        cfg.batch_size, run_id, cfg.progress)
    stage = HardNegativeMiner(cfg, set_id, run_id)
    for key, (lang, task) in zip(keys, pools):
        todo = pending.filter(pl.col("_pool") == key)
        pool = build_pool(cat, cfg, (lang, task), fp, dim)
        if not pool.texts:
            continue
        anchors = load_embeddings(cat, fp, todo["anchor"].to_list(), dim)          # (b, d)
        todo = todo.with_columns(pl.Series("anchor_vec", anchors))
        stage.use_pool(pool)
        summary["negatives"] += drive(cat, stage, todo, write_mined, batch_size=cfg.mine_batch,
                                      desc=f"mine {lang}/{task}", progress=cfg.progress)
    agg = cat.query("SELECT count(*) FILTER (WHERE n_negatives > 0) AS with_neg, "
                    + ", ".join(f"coalesce(sum(refused_{g}), 0) AS {g}" for g in GUARDS)
                    + " FROM mined_examples WHERE set_id = ? AND run_id IS NOT DISTINCT FROM ?", [set_id, run_id])[0]
    summary["examples_with_negatives"] = agg.pop("with_neg")
    summary["refused"] = {g: int(agg[g]) for g in GUARDS}
    return summary

