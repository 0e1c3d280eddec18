"""Hard-negative mining into the catalog: positive-aware, class-aware, incremental; two stages on the runner.

`encode` (`mine_cache.EncodeStage`) caches the embeddings of anchors (as queries) and candidates (as documents);
`mine` (`MineStage`, here) reads them. For every kept example, the candidates are its pool (`mine_pool`): the
distinct kept positives of its language and, by default, task (a category path is no useful negative for a
query whose positive is a title, and a title is a harmful one for a title -> category pair); with `--pool
products`, also every product text of its language and market that the task's rule names. Exact search streams
the pool's embeddings in chunks (`mine_search.stream_topk`), so memory does not grow with the pool (with
`ann_min`, pools of that many texts or more are searched with an IVF index instead: `mine_ann`); then guards,
checked in this order and each counted in `mined_examples`:

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
(model fingerprint and prompts, guard parameters) pair, its id the params hash; the stage's pending selection is
the kept examples not yet in `mined_examples` for the set, ordered by pool and carrying no vector; everything
else it reads (the pools, with the query vectors of their pending anchors; the positives' vectors are the pool's)
is read once in `prepare`, one pool at a time (the vectors of all in one scan of the cache), each parked in a
temporary file until its batches come, so a batch holds only its own pools: `process` is pure over its batch
and the pools.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from typing import ClassVar

import numpy as np
import polars as pl
import torch

from compass.catalog.db import Catalog, Run, duckdb_memory
from compass.filters.mine_ann import ann_topk, build_index, read_index
from compass.filters.mine_cache import (
    EncoderKeys,
    EncoderStage,
    EncodeStage,
    encoder_keys,
    load_encoder,
)
from compass.filters.mine_config import MineConfig
from compass.filters.mine_pool import (
    DEFAULT_RULE,
    TASK_RULES,
    Pool,
    PoolKey,
    load_pool,
    load_queries,
    park_pool,
    pool_files,
    positive_facts,
    unpark_pool,
)
from compass.filters.mine_search import GUARDS, Sets, hash_strings, select_negatives, share, stream_topk
from compass.filters.mine_vectors import VectorFill
from compass.ids import params_hash, text_hash
from compass.registry import stages
from compass.runner import execute
from compass.stage import Selection
from compass.text import normalize, uses_spaces


def example_keys(class_id: str, translation_group: str | None) -> list[str]:
    return [class_id] + ([f"tg:{translation_group}"] if translation_group else [])


MINED_SCHEMA = {"set_id": pl.Utf8, "example_id": pl.Utf8, "lang": pl.Utf8, "pool": pl.Utf8, "n_examined": pl.Int64,
                "n_negatives": pl.Int64, **{f"refused_{g}": pl.Int64 for g in GUARDS}, "positive_retrieved": pl.Boolean,
                "run_id": pl.Utf8}
NEG_SCHEMA = {"set_id": pl.Utf8, "example_id": pl.Utf8, "rank": pl.Int64, "negative_text": pl.Utf8,
              "negative_example_id": pl.Utf8, "score": pl.Float64, "positive_score": pl.Float64, "run_id": pl.Utf8,
              "source": pl.Utf8}


@stages.register
class MineStage(EncoderStage):
    """Kept examples -> hard negatives (`negatives`) and one `mined_examples` row each, in negative set `set_id`.

    Shardable: an example's negatives depend on its own row and on the pools `prepare` read. The pools are files
    (`files`), so an executor can ship them to workers on other machines (`use_files`).
    """

    name: ClassVar[str] = "mine"
    Config = MineConfig
    writes = {"negatives": ("set_id", "example_id", "rank"), "mined_examples": ("set_id", "example_id"),
              "negative_sets": ("set_id",)}
    # pending: kept examples with no mined_examples row in the set; a batch writes that row and the example's
    # negatives together, so neither key was written before
    appends = frozenset({"negatives", "mined_examples"})
    unit: ClassVar[str] = "examples"
    volatile = frozenset({"batch_size", "mine_batch", "cand_chunk", "duckdb_memory", "device", "progress", "block"})

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.config.validate()
        self.batch_size = self.config.mine_batch
        self.pools: dict[PoolKey, Pool] = {}          # the pools of the current batch
        self._parked: dict[PoolKey, str] = {}         # every pool of the run: the file it waits in
        self._indexes: dict[PoolKey, object] = {}     # the IVF indexes of the current batch's large pools
        self.ivf_pools: dict[str, int] = {}           # label -> texts, of the pools `prepare` indexed
        self._langs = self.config.langs
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._set_id: str | None = None
        self._fetch = None                            # on a Ray worker: the parked pools' files, copied here

    def __getstate__(self) -> dict:
        # What a worker needs to run `process`: the config, the set's identity and the parked pools' names (their
        # files travel apart: `files`). Not the driver's model (`process` never encodes), temp folder or pools.
        return {**super().__getstate__(), "_tmp": None, "pools": {}, "_indexes": {}, "_fetch": None}

    def files(self) -> dict[str, list[str]]:
        """Every parked pool, a unit each: its pickle, vectors, query vectors and IVF index."""
        return {os.path.basename(path): pool_files(path) for path in self._parked.values()}

    def use_files(self, fetch) -> None:
        self._fetch = fetch

    def use(self, model=None, encoder: EncoderKeys | None = None) -> MineStage:
        self._set_id = None
        return super().use(model, encoder)

    @property
    def set_params(self) -> dict:
        return self.config.set_params(self.encoder.fp, self.encoder.prompts)

    @property
    def set_id(self) -> str:
        if self._set_id is None:
            self._set_id = params_hash(self.set_params)
        return self._set_id

    def _keys_sql(self) -> tuple[str, str, str]:
        cfg = self.config
        return ("'*'" if cfg.cross_lingual else "k.lang", "k.task" if cfg.pool_by == "task" else "'*'",
                "coalesce(k.market, '*')" if cfg.pool == "products" else "'*'")

    def _pending(self, langs: list[str] | None) -> tuple[str, list]:
        self._langs = langs if langs is not None else self.config.langs
        cond, params = (f"k.lang IN ({', '.join('?' * len(self._langs))})", list(self._langs)) if self._langs \
            else ("TRUE", [])
        return (f"{cond} AND NOT EXISTS (SELECT 1 FROM mined_examples m WHERE m.set_id = ? AND m.example_id = k.id)",
                params + [self.set_id])

    def select(self, langs: list[str] | None = None) -> Selection:
        where, params = self._pending(langs)
        lang, task, market = self._keys_sql()
        # No vectors here: DuckDB holds a streamed sort's payload in memory. The anchors' query vectors are read
        # per pool by `prepare`, the positives' document vectors are the pool's own.
        return Selection(
            f"SELECT k.id, k.lang, k.market, k.task, k.anchor, k.positive, k.class_id, k.translation_group, "
            f"{lang} AS _lang, {task} AS _task, {market} AS _market "
            f"FROM kept_examples k WHERE {where} ORDER BY _lang, _task, _market, k.id",
            params, f"SELECT count(*) FROM kept_examples k WHERE {where}")

    @property
    def duckdb_memory(self) -> str | None:   # the runner caps DuckDB with it while the selection streams
        return self.config.duckdb_memory

    def prepare(self, cat: Catalog) -> None:
        """Read the pools of the pending examples (texts, classes, clusters) once, one at a time, each parked in a
        file until its examples come (the selection is ordered by pool), then the vectors of all of them and of
        their queries in one scan of the embedding cache (`VectorFill`); keeps no connection."""
        where, params = self._pending(self._langs)
        lang, task, market = self._keys_sql()
        keys = cat.con.execute(f"SELECT {lang}, {task}, {market}, list(DISTINCT k.lang) FROM kept_examples k "
                               f"WHERE {where} GROUP BY ALL ORDER BY ALL", params).fetchall()
        self.close()
        self.ivf_pools = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="compass-mine-")
        fill = VectorFill(self.encoder.dim)     # every pool's vectors in one scan of the cache, after the loop
        facts = positive_facts(cat, self.config.duckdb_memory) if keys else nullcontext()
        with facts as table:                   # what makes each text a positive, for every pool in one scan
            for lg, tk, mk, example_langs in keys:
                self._read_pool(cat, PoolKey(lg, tk, mk, self.config.pool), example_langs, where, params, fill, table)
        fill.run(cat, self.config.duckdb_memory, self.config.cand_chunk)
        for key, path in list(self._parked.items()) if self.config.ann_min else []:   # IVF, now the vectors are in
            pool = unpark_pool(path)
            if len(pool) >= self.config.ann_min:
                pool.ann = build_index(pool.emb, os.path.join(self._tmp.name, f"ivf{len(self.ivf_pools)}.faiss"))
                self.ivf_pools[key.label()] = len(pool)
                self._parked[key] = park_pool(pool, self._tmp.name)

    def _read_pool(self, cat: Catalog, key: PoolKey, example_langs: list[str], where: str, params: list,
                   fill: VectorFill, facts: str) -> None:
        """Read one pool and its pending examples' query hashes (vectors planned in `fill`), then park it."""
        pool = load_pool(cat, key, self._langs, self.encoder.keys["document"], self.encoder.dim, self._tmp.name,
                         {uses_spaces(x) for x in example_langs}, self.config.duckdb_memory, self.config.cand_chunk,
                         fill, facts)
        if pool is None:            # no candidate at all: its examples stay pending, as before the port
            return
        lang, task, market = self._keys_sql()
        with duckdb_memory(cat, self.config.duckdb_memory):
            pool.queries = load_queries(
                cat, f"SELECT substr(sha256(k.anchor), 1, 20) AS h FROM kept_examples k WHERE {where} AND "
                f"{lang} = ? AND {task} = ? AND {market} = ?", [*params, key.lang, key.task, key.market],
                self.encoder.keys["query"], self.encoder.dim,
                os.path.join(self._tmp.name, f"queries{len(self._parked)}.npy"), self.config.cand_chunk, fill)
        self._parked[key] = park_pool(pool, self._tmp.name)

    def close(self) -> None:
        """Drop the pools, their files and their memory-mapped vectors."""
        self.pools, self._parked, self._indexes = {}, {}, {}
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _pool(self, key: PoolKey) -> Pool | None:
        """The pool of `key`, read back from its file on first use; the pools of earlier keys are dropped (the
        selection comes ordered by pool, so only the pools of one batch are held, whatever the catalog's size)."""
        if key not in self.pools and key in self._parked:
            path = self._parked[key]
            if self._fetch is not None:      # a worker elsewhere: the pool's files, copied from the driver
                path = self._fetch(os.path.basename(path))[os.path.basename(path)]
            self.pools[key] = unpark_pool(path)
            if self.pools[key].ann is not None:
                self._indexes[key] = read_index(self.pools[key].ann)
        return self.pools.get(key)

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        negs, mined = [], []
        groups = batch.group_by(["_lang", "_task", "_market"], maintain_order=True)
        wanted = {PoolKey(lang, task, market, self.config.pool) for (lang, task, market), _ in groups}
        self.pools = {k: p for k, p in self.pools.items() if k in wanted}      # parked already: nothing to write
        self._indexes = {k: x for k, x in self._indexes.items() if k in wanted}
        for (lang, task, market), group in groups:
            pool = self._pool(PoolKey(lang, task, market, self.config.pool))
            if pool is not None:
                n, m = self._mine(group, pool)
                negs.append(n)
                mined.append(m)
        return {"negative_sets": pl.DataFrame({"set_id": [self.set_id], "model": [self.config.model],
                                               "params": [json.dumps(self.set_params)], "run_id": [self.run_id]},
                                              schema_overrides={"run_id": pl.Utf8}),
                "negatives": pl.concat(negs) if negs else pl.DataFrame(schema=NEG_SCHEMA),
                "mined_examples": pl.concat(mined) if mined else pl.DataFrame(schema=MINED_SCHEMA)}

    def _mine(self, g: pl.DataFrame, pool: Pool) -> tuple[pl.DataFrame, pl.DataFrame]:
        """One pool's examples of a batch: search, guards; (negatives, mined_examples) rows."""
        cfg = self.config
        q = pool.queries.get([text_hash(t) for t in g["anchor"]])                      # (b, d)
        pos_idx = pool.positions([text_hash(t) for t in g["positive"]])                # (b,), -1: not in the pool
        if (pos_idx < 0).any():   # a kept example's positive is a text of its pool by construction (pool_sql)
            raise RuntimeError(f"mine: {int((pos_idx < 0).sum())} positives missing from pool {pool.key.label()}")
        p = np.array(pool.emb[pos_idx], dtype=np.float32)                              # (b, d)
        pos_score = np.einsum("bd,bd->b", q, p).astype(np.float64)                     # (b,)
        if pool.ann is not None:                                                       # a large pool: IVF
            scores, idx = ann_topk(self._indexes[pool.key], q, cfg.top_k + 1, cfg.nprobe)
        else:
            with torch.inference_mode():
                s, i = stream_topk(torch.from_numpy(q).to(cfg.device), pool.chunks(cfg.cand_chunk, cfg.device),
                                   cfg.top_k + 1, block=cfg.block)
            scores, idx = s.cpu().numpy(), i.cpu().numpy()                             # (b, k) each
        guards = self._pair_guards(g, pool, pos_idx)
        b, tasks = g.height, g["task"].to_numpy()
        counts = {"examined": np.zeros(b, np.int64), "retrieved": np.zeros(b, bool),
                  **{x: np.zeros(b, np.int64) for x in GUARDS}}
        rows_out, rank_out, cand_out, score_out = [], [], [], []
        for task in sorted(set(tasks)):                       # guards differ per task (TASK_RULES)
            rows = np.flatnonzero(tasks == task)
            m = select_negatives(scores[rows], idx[rows], pos_idx[rows], pos_score[rows], cfg.guard_config(task),
                                 pairs=lambda r, c, rows=rows: guards(rows[r], c))
            counts["examined"][rows], counts["retrieved"][rows] = m.examined, m.positive_retrieved
            for x in GUARDS:
                counts[x][rows] = m.refused[x]
            rows_out.append(rows[m.q])
            rank_out.append(m.rank)
            cand_out.append(m.cand)
            score_out.append(m.score)
        r, c = np.concatenate(rows_out), np.concatenate(cand_out)
        order = np.lexsort((np.concatenate(rank_out), r))   # by example, then rank
        r, c = r[order], c[order]
        negs = pl.DataFrame({"set_id": [self.set_id] * len(r), "example_id": g["id"].gather(r),
                             "rank": np.concatenate(rank_out)[order], "negative_text": pool.texts.gather(c),
                             "negative_example_id": pool.example_ids.gather(c),
                             "score": np.concatenate(score_out)[order], "positive_score": pos_score[r],
                             "run_id": pl.Series([self.run_id] * len(r), dtype=pl.Utf8),
                             "source": pool.sources.gather(c)}, schema=NEG_SCHEMA)
        mined = pl.DataFrame({"set_id": [self.set_id] * b, "example_id": g["id"], "lang": g["lang"],
                              "pool": [pool.key.label()] * b, "n_examined": counts["examined"],
                              "n_negatives": np.bincount(r, minlength=b).astype(np.int64),
                              **{f"refused_{x}": counts[x] for x in GUARDS}, "positive_retrieved": counts["retrieved"],
                              "run_id": pl.Series([self.run_id] * b, dtype=pl.Utf8)}, schema=MINED_SCHEMA)
        return negs, mined

    def _pair_guards(self, g: pl.DataFrame, pool: Pool, pos_idx: np.ndarray):
        """near_dup and class for (row, candidate) pairs, as arrays over the pool's precomputed keys."""
        cfg = self.config
        anchor_norm = hash_strings([normalize(a) for a in g["anchor"]])                # (b,)
        spaced = np.array([uses_spaces(x) for x in g["lang"]], bool)                   # (b,)
        row_keys = Sets.from_lists([[pool.class_ids[k] for k in example_keys(c, t) if k in pool.class_ids]
                                    for c, t in zip(g["class_id"], g["translation_group"])])
        tk = pool.text_keys

        def guards(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # a copy of the anchor itself is no negative either (possible when pools mix tasks and margin is off)
            nd = tk.norm[c] == anchor_norm[r]
            p = pos_idx[r]
            t = np.flatnonzero(p >= 0)
            if len(t):
                nd[t] |= tk.near_dup(p[t], c[t], spaced[r[t]], cfg.near_dup, pool.clusters)
            cl = share(row_keys, r, pool.classes, c) if cfg.class_guard else np.zeros(len(r), bool)
            return nd, cl
        return guards

    def write(self, con, outputs: dict[str, pl.DataFrame]) -> dict[str, int]:
        # Stage.write (insert_rows on the declared keys), minus the tables a batch left empty or unset
        return super().write(con, {t: f for t, f in outputs.items() if f is not None and not f.is_empty()})

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict:
        m = outputs["mined_examples"]
        if m.is_empty():
            return {}
        return {"examples_with_negatives": int((m["n_negatives"] > 0).sum()),
                "refused": {x: int(m[f"refused_{x}"].sum()) for x in GUARDS}}


def encode_stages(cfg: MineConfig, enc: EncoderKeys, model=None) -> list[EncodeStage]:
    """The encode stages mining needs: anchors as queries, candidates as documents (one stage when the two roles
    share a cache key, i.e. the model has no prompts, so a text that is both is encoded once)."""
    products = [f"products:{f}" for f in sorted({f for r in [*TASK_RULES.values(), DEFAULT_RULE] for f in r.fields})
                ] if cfg.pool == "products" else []
    if enc.keys["query"] == enc.keys["document"]:
        specs = [("document", ["anchors", "positives", *products])]
    else:
        specs = [("query", ["anchors"]), ("document", ["positives", *products])]
    return [EncodeStage(model=cfg.model, role=role, sources=src, batch_size=cfg.batch_size, device=cfg.device
                        ).use(model, enc) for role, src in specs]


def mine(cat: Catalog, cfg: MineConfig, rec: Run | None = None, model=None) -> dict:
    """Encode what is missing, then mine the kept examples not yet in this negative set, inside run record `rec`
    (None: rows carry no run id); returns a summary dict."""
    cfg.validate()
    model = model or load_encoder(cfg.model, cfg.device)
    enc = encoder_keys(model, cfg.model)
    encoded = sum(execute(cat, st, rec, langs=cfg.langs, progress=cfg.progress).written.get("embedding_cache", 0)
                  for st in encode_stages(cfg, enc, model))
    stage = MineStage(cfg).use(model, enc)
    try:
        s = execute(cat, stage, rec, langs=cfg.langs, progress=cfg.progress)
    finally:
        stage.close()
    return {"set_id": stage.set_id, "model_fp": enc.fp, "prompts": enc.prompts, "pending": s.read,
            "encoded": encoded, "negatives": s.written.get("negatives", 0),
            "examples_with_negatives": s.info.get("examples_with_negatives", 0),
            "refused": {x: s.info.get("refused", {}).get(x, 0) for x in GUARDS}, "ivf_pools": stage.ivf_pools}
