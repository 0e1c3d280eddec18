"""Hard-negative mining into the catalog: positive-aware, class-aware, incremental.

For every kept example, the candidates are its pool (`mine_pool`): the distinct kept positives of its language
and, by default, task (a category path is no useful negative for a query whose positive is a title, and a title
is a harmful one for a title -> category pair); with `--pool products`, also every product text of its language
and market that the task's rule names. Anchors are encoded as queries, candidates as documents (`mine_cache`).
Exact search streams the candidate embeddings from the catalog in chunks (`mine_search.stream_topk`), so memory
does not grow with the pool; then guards, checked in this order and each counted in `mined_examples`:

- near_dup: the candidate equals the positive (or the anchor) after `compass.text.normalize`, or is a
  near-duplicate of the positive (`compass.text.is_near_duplicate`: word-bigram / char-trigram Jaccard >=
  threshold), or shares its dedup cluster when the dedup stage has clustered positives (`positive_clusters`);
- class: the candidate is the positive of some example sharing the example's class id or translation group
  (a text can be the positive of several examples, so all of them are checked), or a product text whose class
  under the task's rule (`mine_pool.TASK_RULES`) is the example's class id;
- margin: score > pos - |pos| x (1 - margin), i.e. above margin x the positive's score (NV-Retriever
  TopK-PercPos);
- rank: outside the rank window [lo, hi) (ranks from 0, the example's own positive not counted).

Margin and rank window default per task (`TASK_RULES`; an explicit --margin / --rank-window applies to all).
The first `per_example` survivors, best first, are stored with the pool they came from. A negative set is one
(model fingerprint and prompts, guard parameters) pair, its id the params hash; rerunning mines only examples not
yet in `mined_examples` for the set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.filters.mine_cache import (ENCODE_CHUNK, duckdb_memory, encode_missing, load_embeddings,
                                        load_encoder, model_fingerprint, register_model, role_prompt,
                                        store_encoded, stream_embeddings)
from compass.filters.mine_pool import (TASK_RULES, PoolKey, build_pool, candidates, missing_pool_texts, positions,
                                       rules_params, task_rule)
from compass.filters.mine_search import GUARDS, GuardConfig, NearDup, select_negatives, stream_topk
from compass.ids import params_hash, text_hash
from compass.stage import insert_frame
from compass.text import normalize

MINER_VERSION = 2  # bump when the mining semantics change, so old sets are not extended with new rules
AUTO = "auto"      # --margin / --rank-window left to the per-task defaults


@dataclass
class MineConfig:
    model: str = "e5-small"
    langs: list[str] | None = None
    top_k: int = 100                      # candidates retrieved per example (search depth)
    rank_window: tuple[int, int] | str = AUTO
    margin: float | None | str = AUTO     # None: no positive-aware margin
    per_example: int = 5
    near_dup: float | None = 0.8          # Jaccard threshold; None: exact (normalised) equality only
    class_guard: bool = True
    pool_by: str = "task"                 # task: same lang + task; lang: same lang, any task
    pool: str = "positives"               # positives | products
    cross_lingual: bool = False           # pool across the selected languages
    batch_size: int = 64                  # encoder batch
    mine_batch: int = 2048                # examples per transaction
    anchor_pass: int = 131072             # anchors searched per streamed pass over a pool
    cand_chunk: int = 16384               # candidate embeddings per streamed chunk
    duckdb_memory: str | None = "256MB"   # DuckDB memory_limit while searching (its buffer pool stays bounded)
    device: str = "cpu"
    progress: bool = True
    block: int = field(default=1 << 25)   # max scores alive at once in the search (128 MB)

    def window(self, task: str) -> tuple[int, int]:
        return task_rule(task).rank_window if self.rank_window == AUTO else tuple(self.rank_window)

    def margin_for(self, task: str) -> float | None:
        return task_rule(task).margin if self.margin == AUTO else self.margin

    def validate(self) -> None:
        if self.rank_window != AUTO:
            lo, hi = self.rank_window
            if not (0 <= lo < hi):
                raise CompassError(f"--rank-window {lo}:{hi}: need 0 <= lo < hi, e.g. 10:100")
        for lo, hi in {self.window(t) for t in [*TASK_RULES, "*"]}:
            if lo >= self.top_k:
                raise CompassError(f"--rank-window {lo}:{hi} starts at or past --top-k {self.top_k}: nothing would "
                                   f"be eligible; raise --top-k above {lo} or lower the window start")
        if self.margin not in (AUTO, None) and not (0 < self.margin <= 1):
            raise CompassError(f"--margin {self.margin}: use a value in (0, 1], e.g. 0.95, or 0 to disable it")
        if self.per_example < 1 or self.top_k < 1:
            raise CompassError("--per-example and --top-k must be at least 1")
        if self.near_dup is not None and not (0 < self.near_dup <= 1):
            raise CompassError(f"--near-dup {self.near_dup}: use a Jaccard threshold in (0, 1], or 0 to disable")
        if self.pool_by not in ("task", "lang"):
            raise CompassError(f"--pool-by {self.pool_by!r}: use task or lang")
        if self.pool not in ("positives", "products"):
            raise CompassError(f"--pool {self.pool!r}: use positives (kept positives) or products (every product "
                               "text of the language and market, plus the positives)")

    def guard_config(self, task: str) -> GuardConfig:
        lo, hi = self.window(task)
        return GuardConfig(depth=self.top_k, lo=lo, hi=hi, margin=self.margin_for(task), per_example=self.per_example)

    def set_params(self, model_fp: str, prompts: dict | None = None) -> dict:
        """What decides the negatives (not langs, batch sizes or device): the negative set's identity."""
        p = {"miner": MINER_VERSION, "model_fp": model_fp, "top_k": self.top_k,
             "rank_window": self.rank_window if self.rank_window == AUTO else list(self.rank_window),
             "margin": self.margin, "per_example": self.per_example, "near_dup": self.near_dup,
             "class_guard": self.class_guard, "pool_by": self.pool_by, "pool": self.pool,
             "cross_lingual": self.cross_lingual, "normalize_embeddings": True, "prompts": prompts or {}}
        if AUTO in (self.margin, self.rank_window) or self.pool == "products":
            p["task_rules"] = rules_params()
        return p


def example_keys(class_id: str, translation_group: str | None) -> frozenset:
    return frozenset([class_id] + ([f"tg:{translation_group}"] if translation_group else []))


NEG_SCHEMA = pl.List(pl.Struct({"rank": pl.Int64, "negative_text": pl.Utf8, "negative_example_id": pl.Utf8,
                                "score": pl.Float64, "source": pl.Utf8}))


class HardNegativeMiner:
    """Guards over one batch's search results: `mined_examples` rows out, negatives nested.

    The search (one streamed pass per pool) and the read-back of the retrieved candidates happen before, in
    `mine`; `process` is pure over its inputs.
    """

    name = "mine"

    def __init__(self, cfg: MineConfig, set_id: str, run_id: str | None):
        self.cfg, self.set_id, self.run_id = cfg, set_id, run_id

    def process(self, batch: pl.DataFrame, key: PoolKey, scores: np.ndarray, idx: np.ndarray, pos_idx: np.ndarray,
                pos_score: np.ndarray, cand) -> pl.DataFrame:
        """scores, idx (b, k): the search's best candidates (pool positions); pos_idx (b,) the positive's position
        (-1: not in the pool); pos_score (b,) anchor . positive; cand: `mine_pool.Candidates` for these positions."""
        cfg = self.cfg
        langs = batch["lang"].to_list()
        keys = [example_keys(c, g) for c, g in zip(batch["class_id"], batch["translation_group"])]
        loc = cand.local
        dup = NearDup(cand.texts, cfg.near_dup, cand.clusters)
        anchors = [normalize(a) for a in batch["anchor"]]

        def same_class(r: int, c: int) -> bool:
            return not keys[r].isdisjoint(cand.classes[loc[c]])

        def near_dup(r: int, c: int) -> bool:
            # a copy of the anchor itself is no negative either (possible when pools mix tasks and margin is off)
            return ((pos_idx[r] >= 0 and dup(loc[int(pos_idx[r])], loc[c], langs[r]))
                    or dup.normalized(loc[c]) == anchors[r])

        tasks = batch["task"].to_list()
        negs: list[list[dict]] = [[] for _ in range(batch.height)]
        counts = {"examined": np.zeros(batch.height, np.int64), "retrieved": np.zeros(batch.height, bool),
                  **{g: np.zeros(batch.height, np.int64) for g in GUARDS}}
        for task in sorted(set(tasks)):                       # guards differ per task (TASK_RULES)
            rows = np.flatnonzero(np.asarray(tasks) == task)
            m = select_negatives(scores[rows], idx[rows], pos_idx[rows], pos_score[rows], cfg.guard_config(task),
                                 (lambda r, c, rows=rows: same_class(int(rows[r]), c)) if cfg.class_guard else None,
                                 lambda r, c, rows=rows: near_dup(int(rows[r]), c))
            counts["examined"][rows] = m.examined
            counts["retrieved"][rows] = m.positive_retrieved
            for g in GUARDS:
                counts[g][rows] = m.refused[g]
            for r, rank, c, s in zip(m.q, m.rank, m.cand, m.score):
                j = loc[int(c)]
                negs[rows[r]].append({"rank": int(rank), "negative_text": cand.texts[j],
                                      "negative_example_id": cand.example_ids[j], "score": float(s),
                                      "source": cand.sources[j]})
        out = {"set_id": [self.set_id] * batch.height, "example_id": batch["id"].to_list(), "lang": langs,
               "pool": [key.label()] * batch.height, "n_examined": counts["examined"].tolist(),
               "n_negatives": [len(n) for n in negs], **{f"refused_{g}": counts[g].tolist() for g in GUARDS},
               "positive_retrieved": counts["retrieved"].tolist(), "run_id": [self.run_id] * batch.height,
               "positive_score": pos_score.tolist(), "negatives": negs}
        return pl.DataFrame(out, schema_overrides={"negatives": NEG_SCHEMA})


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


def _encode_pool(cat: Catalog, model, key: str, cfg: MineConfig, run_id: str | None) -> int:
    """Encode (as documents) the pool texts the cache lacks, ENCODE_CHUNK at a time; returns how many."""
    done = 0
    while todo := missing_pool_texts(cat, key, ENCODE_CHUNK):
        done += store_encoded(cat, model, key, todo, cfg.batch_size, run_id, cfg.progress, "document")
    return done


def _chunks(cat: Catalog, key: str, dim: int, cfg: MineConfig):
    for pos, emb in stream_embeddings(cat, key, "_mine_pool", dim, cfg.cand_chunk):
        yield torch.from_numpy(pos), torch.from_numpy(emb)


def mine(cat: Catalog, cfg: MineConfig, run_id: str | None, model=None) -> dict:
    """Mine negatives for the kept examples not yet mined in this set; returns a summary dict."""
    cfg.validate()
    model = model or load_encoder(cfg.model, cfg.device)
    fp = model_fingerprint(model)
    dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
              else model.get_sentence_embedding_dimension())
    keys = register_model(cat, fp, cfg.model, dim, run_id, model)
    prompts = {r: role_prompt(model, r) for r in keys if role_prompt(model, r)}
    set_params = cfg.set_params(fp, prompts)
    set_id = params_hash(set_params)
    with cat.transaction() as con:
        con.execute("INSERT INTO negative_sets (set_id, model, params, run_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING", [set_id, cfg.model, json.dumps(set_params), run_id])
    where, params = _lang_filter(cfg.langs, "k.lang")
    pending = cat.frame(f"SELECT k.id, k.lang, k.market, k.task, k.anchor, k.positive, k.class_id, "
                        f"k.translation_group FROM kept_examples k WHERE {where} AND NOT EXISTS (SELECT 1 FROM "
                        f"mined_examples m WHERE m.set_id = ? AND m.example_id = k.id) ORDER BY k.id",
                        params + [set_id])
    summary = {"set_id": set_id, "model_fp": fp, "prompts": prompts, "pending": pending.height, "encoded": 0,
               "negatives": 0, "examples_with_negatives": 0, "refused": {g: 0 for g in GUARDS}}
    if pending.is_empty():
        return summary
    products = cfg.pool == "products"
    pending = pending.with_columns(
        (pl.lit("*") if cfg.cross_lingual else pl.col("lang")).alias("_lang"),
        (pl.col("task") if cfg.pool_by == "task" else pl.lit("*")).alias("_task"),
        (pl.col("market").fill_null("*") if products else pl.lit("*")).alias("_market"))
    summary["encoded"] = encode_missing(cat, model, keys["query"], pending["anchor"].to_list(), cfg.batch_size,
                                        run_id, cfg.progress, role="query")
    stage = HardNegativeMiner(cfg, set_id, run_id)
    for (lang, task, market), todo in sorted(pending.group_by(["_lang", "_task", "_market"]), key=lambda g: g[0]):
        key = PoolKey(lang, task, market, cfg.pool)
        if not build_pool(cat, key, cfg.langs):
            continue
        summary["encoded"] += _encode_pool(cat, model, keys["document"], cfg, run_id)
        summary["encoded"] += encode_missing(cat, model, keys["document"], todo["positive"].to_list(),
                                             cfg.batch_size, run_id, cfg.progress, role="document")
        for start in range(0, todo.height, cfg.anchor_pass):
            summary["negatives"] += _mine_pass(cat, cfg, stage, key, keys, dim, todo.slice(start, cfg.anchor_pass))
    cat.con.execute("DROP TABLE IF EXISTS _mine_pool")
    agg = cat.query("SELECT count(*) FILTER (WHERE n_negatives > 0) AS with_neg, "
                    + ", ".join(f"coalesce(sum(refused_{g}), 0) AS {g}" for g in GUARDS)
                    + " FROM mined_examples WHERE set_id = ? AND run_id IS NOT DISTINCT FROM ?", [set_id, run_id])[0]
    summary["examples_with_negatives"] = agg.pop("with_neg")
    summary["refused"] = {g: int(agg[g]) for g in GUARDS}
    return summary


def _mine_pass(cat: Catalog, cfg: MineConfig, stage: HardNegativeMiner, key: PoolKey, keys: dict, dim: int,
               todo: pl.DataFrame) -> int:
    """One streamed search of the pool for up to `anchor_pass` anchors, then guards and writes per mine_batch."""
    q = load_embeddings(cat, keys["query"], todo["anchor"].to_list(), dim)              # (b, d)
    p = load_embeddings(cat, keys["document"], todo["positive"].to_list(), dim)         # (b, d)
    pos_score = np.einsum("bd,bd->b", q, p).astype(np.float64)                         # (b,)
    del p
    pos_idx = positions(cat, [text_hash(t) for t in todo["positive"]])
    qt = torch.from_numpy(q).to(cfg.device)
    with torch.inference_mode(), duckdb_memory(cat, cfg.duckdb_memory):
        s, i = stream_topk(qt, _chunks(cat, keys["document"], dim, cfg), cfg.top_k + 1, block=cfg.block)
    scores, idx = s.cpu().numpy(), i.cpu().numpy()                                     # (b, k) each
    del q, qt, s, i
    written = 0
    bar = tqdm(total=todo.height, desc=f"mine {key.label()}", unit="rows", disable=not cfg.progress, leave=False)
    try:
        for start in range(0, todo.height, cfg.mine_batch):
            sl = slice(start, start + cfg.mine_batch)
            batch = todo.slice(start, cfg.mine_batch)
            cand = candidates(cat, key, np.concatenate([idx[sl].reshape(-1), pos_idx[sl]]))
            out = stage.process(batch, key, scores[sl], idx[sl], pos_idx[sl], pos_score[sl], cand)
            with cat.transaction() as con:
                written += write_mined(con, out)
            bar.update(batch.height)
    finally:
        bar.close()
    return written
