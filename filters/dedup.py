"""Exact and near-duplicate detection with stored MinHash signatures and first-seen clusters.

What is deduplicated: the *anchor* within (lang, task). A thousand near-copies of one query (the usual
failure of LLM generation, and of templated structured queries) are the problem; a title that is the
positive of several queries is not. Positives are clustered too, within lang, but never rejected: the
cluster says which positives are the same text, which mining needs (a near-copy of the positive is not a
negative). Both live in `dedup_members`; the `positive_clusters` view and `positive_cluster_ids()` read them.

Exact duplicates: same `compass.text.normalized_hash` (NFC, casefold, whitespace). Near duplicates: MinHash
LSH (datasketch parameters: 128 permutations, Jaccard threshold 0.8, seed 1) over `compass.text.shingles`,
word bigrams for spaced scripts and character trigrams for th/lo/km/my. Order: examples judged by earlier
runs first (their stored `seq`), then this run's in (created_at, id) order; each text is matched to the
earliest earlier text; the first of a cluster keeps its place, the others are rejected naming it.

Two stages: `dedup_signatures` (shardable, `compass.filters.dedup_signatures`) stores each example's hashes and
signatures (once per normalised text, shingling and parameters in `minhash_signatures`); `dedup` (global, here)
clusters in first-seen order, reading the stored signatures through its selection. Run alone, `dedup` signs
what is not signed yet itself, so both orders give the same clusters. Members are keyed by the clustering
parameters (`params_hash`): another threshold builds its own clusters over what is still kept.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow.compute as pc

from compass.arrow_arrays import hash_array, hash_prefix64, uint32_rows
from compass.catalog.db import Catalog, duckdb_memory, registered
from compass.filters.base import Filter, FilterConfig, Verdict, pending_where
from compass.filters.dedup_signatures import (
    FIELDS,
    LINK_KEY,
    SIG_KEY,
    link_rows,
    shingling,
    sig_params,
    sign,
    signature_rows,
    sql_hex,
)
from compass.filters.dedup_state import LangState
from compass.filters.minhash import EMPTY, LSHIndex, estimate, permutations, signatures
from compass.registry import stages
from compass.stage import Selection
from compass.text import normalized_hash, shingles

MEMBER_KEY = ("example_id", "field", "params_hash")
# DuckDB's memory_limit while the stage runs: its sort and joins spill beyond it. One language's signature store
# and indexes (about 1 GB at 1M products) sit beside it; the tables it writes have kept no key index in memory
# since migration 0110, so 512 MB suffices where 1 GB was needed.
DUCKDB_MEMORY = "512MB"
PREPARE_CHUNK = 50_000    # stored members read per chunk in `prepare`
MEMBER_SCHEMA = {"example_id": pl.Utf8, "field": pl.Utf8, "scope": pl.Utf8, "text_hash": pl.Utf8,
                 "shingling": pl.Utf8, "seq": pl.Int64, "cluster_id": pl.Utf8, "dup_of": pl.Utf8,
                 "exact": pl.Boolean}


class DedupConfig(FilterConfig):
    threshold: float = 0.8
    num_perm: int = 128
    seed: int = 1
    cluster_positives: bool = True

    def sig_params(self) -> str:
        return sig_params(self.num_perm, self.seed)


class NearDupIndex:
    """First-seen exact + near-duplicate matching over one scope, fed in order, batch after batch.

    `add(keys, hashes, sigs)` returns for each new item (dup_of key or None, exact?, cluster key, score).
    Exact duplicates (same normalised hash) and texts without shingles never enter the LSH part: the first
    has the same signature as its original, the second has nothing to compare.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128):
        self.threshold, self.num_perm = threshold, num_perm
        self.keys: list = []
        self.lsh = LSHIndex(threshold, num_perm)        # the signatures of the rows `keys` names, banded
        self.first_by_hash: dict[str, object] = {}
        self.cluster_of: dict[object, object] = {}

    def load(self, keys: list, hashes: list[str], sigs: np.ndarray, cluster_keys: list, dup_of: list) -> None:
        """Restore an earlier run's state (in its order) without re-judging it."""
        for k, h, c in zip(keys, hashes, cluster_keys):
            if self.first_by_hash.setdefault(h, k) == k:
                self.cluster_of[k] = c
        lsh = [i for i, d in enumerate(dup_of) if d is None or not self._exact_dup(keys[i], hashes[i])]
        lsh = [i for i in lsh if not (sigs[i] == EMPTY).all()]
        self.keys += [keys[i] for i in lsh]
        self.lsh.index(sigs[lsh])

    def copy(self) -> NearDupIndex:
        new = NearDupIndex(self.threshold, self.num_perm)
        new.keys, new.lsh = list(self.keys), self.lsh.copy()
        new.first_by_hash, new.cluster_of = dict(self.first_by_hash), dict(self.cluster_of)
        return new

    def _exact_dup(self, key, h: str) -> bool:
        return self.first_by_hash.get(h, key) != key

    def add(self, keys: list, hashes: list[str], sigs: np.ndarray) -> list[tuple]:
        res: list = [None] * len(keys)
        lsh_rows = []
        for i, (k, h) in enumerate(zip(keys, hashes)):
            first = self.first_by_hash.get(h)
            if first is not None:
                res[i] = (first, True, 1.0)
                continue
            self.first_by_hash[h] = k
            if (sigs[i] == EMPTY).all():
                res[i] = (None, False, None)
            else:
                lsh_rows.append(i)
        start = len(self.keys)
        match = self.lsh.add(sigs[lsh_rows])             # (len(lsh_rows),) earliest matching row or -1
        self.keys += [keys[i] for i in lsh_rows]
        allsigs = self.lsh.sigs
        for j, i in enumerate(lsh_rows):
            m = match[j]
            res[i] = (None, False, None) if m < 0 else (self.keys[m], False, estimate(allsigs[m], allsigs[start + j]))
        out = []
        for k, (dup, exact, score) in zip(keys, res):  # in order: a duplicate's original already has its cluster
            c = k if dup is None else self.cluster_of[dup]
            if not exact:  # only a text's first copy can be matched later: exact copies need no entry
                self.cluster_of[k] = c
            out.append((dup, exact, c, score))
        return out


def dedup_texts(texts: list[str], lang: str, threshold: float = 0.8, num_perm: int = 128,
                seed: int = 1) -> list[int | None]:
    """In-memory first-seen dedup of `texts` (as the stage does it): index of the original, or None."""
    idx = NearDupIndex(threshold, num_perm)
    sigs = signatures([shingles(t, lang) for t in texts], num_perm, seed)
    return [d for d, _, _, _ in idx.add(list(range(len(texts))), [normalized_hash(t) for t in texts], sigs)]


@stages.register
class Dedup(Filter):
    """Rejects anchors that (near-)duplicate an earlier anchor of the same (lang, task); clusters positives.

    Global (first-seen order within each scope): the runner feeds it every pending batch in order, in one process.
    Examples signed by the `dedup_signatures` stage get their stored signatures; only the others are signed here.
    Every scope lies within one language and the selection comes ordered by language first, so only the state of
    the current batch's languages is in memory (`compass.filters.dedup_state`): the peak holds one language's
    distinct texts, not the catalog's. `prepare` reads that state per language (stored members rebuilt into
    indexes, stored signatures of the pending texts) into a temporary folder; `finish` removes it.
    """

    name: ClassVar[str] = "dedup"
    Config = DedupConfig
    shardable: ClassVar[bool] = False
    batch_size: ClassVar[int] = 20000
    duckdb_memory: ClassVar[str | None] = DUCKDB_MEMORY
    writes: ClassVar[dict[str, tuple[str, ...]]] = {
        "decisions": ("example_id", "stage", "params_hash"), "dedup_members": MEMBER_KEY,
        "minhash_signatures": SIG_KEY, "example_signatures": LINK_KEY}
    # One decision and one member row per field for each pending example (keyed by it and these params); the
    # signatures are keyed by text, which other examples share, and keep the anti-join.
    appends: ClassVar[frozenset[str]] = frozenset({"decisions", "dedup_members"})

    def __init__(self, config: DedupConfig | dict | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self.state = LangState()        # indexes and signature stores of the languages of the current batch
        self.seq: dict[tuple[str, str], int] = {}
        self._perms = None
        self._langs: list[str] | None = None

    @property
    def indexes(self) -> dict[tuple[str, str], NearDupIndex]:
        return self.state.indexes

    def fields(self) -> tuple[str, ...]:
        return FIELDS if self.config.cluster_positives else FIELDS[:1]

    def _joins(self) -> str:
        sp = sql_hex(self.config.sig_params())
        # Literal field names and a checked hex hash: nothing here comes from the user. A link is written in the
        # same transaction as its text's signature (by `dedup_signatures` or by this stage), so a link means a
        # stored signature: joining the signatures too (3M rows at 1M products, twice) cost half of this
        # selection's 35 s there, for nothing.
        return " ".join(f"LEFT JOIN example_signatures l_{f} ON l_{f}.example_id = e.id AND l_{f}.field = '{f}' "
                        f"AND l_{f}.sig_params = {sp}" for f in self.fields())

    def select(self, langs: list[str] | None = None) -> Selection:
        # Narrow on purpose: DuckDB holds a streamed sort's payload in memory, so the signatures (`prepare` reads
        # them per language) and the texts already signed stay out of it.
        self._langs = langs
        cols = ["e.id", "e.lang", "e.task", "e.created_at"]
        for f in self.fields():
            cols += [f"CASE WHEN l_{f}.text_hash IS NULL THEN e.{f} END AS {f}", f"l_{f}.text_hash AS {f}_hash",
                     f"l_{f}.text_hash IS NOT NULL AS {f}_signed"]
        where, params = pending_where(self.name, self.params_hash, langs)
        return Selection(f"SELECT {', '.join(cols)} FROM examples e {self._joins()} {where} "
                         "ORDER BY e.lang, e.created_at, e.id", params, f"SELECT count(*) FROM examples e {where}")

    def setup(self) -> None:
        if self._perms is None:
            self._perms = permutations(self.config.num_perm, self.config.seed)

    def prepare(self, cat: Catalog) -> None:
        """Per language touched: the stored members (and signatures) of its scopes, rebuilt into indexes, and the
        stored signatures of its pending examples' texts; each language parked in a file until its first batch,
        so this holds one language at a time too (DuckDB reads in chunks, under DUCKDB_MEMORY)."""
        self.state.close()
        where, params = pending_where(self.name, self.params_hash, self._langs)
        with duckdb_memory(cat, DUCKDB_MEMORY):
            touched = cat.query(f"SELECT DISTINCT e.lang, e.task FROM examples e {where}", params)
            scopes = {(r["lang"], "anchor", f"{r['lang']}/{r['task']}") for r in touched}
            if self.config.cluster_positives:
                scopes |= {(r["lang"], "positive", r["lang"]) for r in touched}
            by_lang: dict[str, list[tuple[str, str]]] = {}
            for lang, field, scope in sorted(scopes):
                by_lang.setdefault(lang, []).append((field, scope))
            self._read_stores(cat, where, params, list(by_lang))
            stored = {(r[0], r[1]) for r in cat.con.execute(
                "SELECT DISTINCT field, scope FROM dedup_members WHERE params_hash = ?", [self.params_hash]).fetchall()}
            for lang, keys in by_lang.items():
                indexes = {}
                for key in keys:
                    idx = self._read_index(cat, *key) if key in stored else None   # a first run stores none
                    if idx is not None and (idx.keys or idx.first_by_hash):
                        indexes[key] = idx
                self.state.park_indexes(lang, indexes)

    def _read_stores(self, cat: Catalog, where: str, params: list, langs: list[str]) -> None:
        """The stored signature of every distinct text the pending examples carry, a store per language, from one
        evaluation of the pending anti-joins and one scan of the signatures for all languages. (A query per
        language, each a join of the pending examples, their links and the signatures grouped and sorted by text,
        took 62.6 CPU-s at 1M products, 40.5 this way: nine scans of 3M signatures, under a cap that keeps none
        of them cached.)"""
        sp = sql_hex(self.config.sig_params())
        fields = ", ".join(f"'{f}'" for f in self.fields())
        texts = "_dedup_pending_texts"
        cat.con.execute(f"CREATE OR REPLACE TEMP TABLE {texts} AS SELECT DISTINCT e.lang, l.text_hash FROM examples e "
                        f"JOIN example_signatures l ON l.example_id = e.id AND l.sig_params = {sp} AND l.field IN "
                        f"({fields}) {where}", params)
        try:
            wanted = {}   # language -> (n,) S20 and their uint64 prefixes, sorted: the texts its examples carry
            for lang in langs:
                col = cat.con.execute(f"SELECT text_hash FROM {texts} WHERE lang = ? ORDER BY text_hash",
                                      [lang]).to_arrow_table().column(0)
                hashes = hash_array(col)
                wanted[lang] = (hashes, hash_prefix64(hashes))   # hex order = numeric order
            spool = self.state.spool(self.config.num_perm)
            reader = cat.con.execute(f"SELECT s.text_hash, s.shingling, s.signature FROM minhash_signatures s WHERE "
                                     f"s.sig_params = {sp} AND s.text_hash IN (SELECT text_hash FROM {texts})"
                                     ).to_arrow_reader(PREPARE_CHUNK)
            for rb in reader:   # unordered: each language's store sorts its own texts
                h, sigs = hash_array(rb.column(0)), uint32_rows(rb.column(2), self.config.num_perm)
                key = hash_prefix64(h)
                kinds = {k: pc.equal(rb.column(1), k).to_numpy(zero_copy_only=False)
                         for k in {shingling(lang) for lang in wanted}}
                for lang, (want, want_key) in wanted.items():
                    if not len(want):
                        continue
                    pos = np.searchsorted(want_key, key).clip(max=len(want) - 1)
                    clash = (want_key[pos] == key) & (want[pos] != h)   # another text with the same 64-bit prefix
                    if clash.any():
                        pos[clash] = np.searchsorted(want, h[clash]).clip(max=len(want) - 1)
                    # a text shared by languages of two scripts has a signature per shingling: the language's own
                    keep = (want[pos] == h) & kinds[shingling(lang)]
                    if keep.any():
                        spool.add(lang, h[keep], sigs[keep])
            spool.finish(langs)
        finally:
            cat.con.execute(f"DROP TABLE IF EXISTS {texts}")

    def _read_index(self, cat: Catalog, field: str, scope: str) -> NearDupIndex:
        """One scope's index, rebuilt from its stored members (an earlier run's) in their order."""
        n = self.config.num_perm
        idx = NearDupIndex(self.config.threshold, n)
        reader = cat.con.execute(
            "SELECT m.example_id, m.text_hash, m.cluster_id, m.dup_of, m.seq, s.signature "
            "FROM dedup_members m JOIN minhash_signatures s ON s.text_hash = m.text_hash "
            "AND s.shingling = m.shingling AND s.sig_params = m.sig_params "
            "WHERE m.field = ? AND m.scope = ? AND m.params_hash = ? ORDER BY m.seq",
            [field, scope, self.params_hash]).to_arrow_reader(PREPARE_CHUNK)
        for rb in reader:
            if not rb.num_rows:
                continue
            rows = pl.from_arrow(rb.drop_columns(["signature"]))
            idx.load(rows["example_id"].to_list(), rows["text_hash"].to_list(), uint32_rows(rb.column("signature"), n),
                     [c.split(":", 1)[1] for c in rows["cluster_id"].to_list()], rows["dup_of"].to_list())
            self.seq[(field, scope)] = int(rows["seq"].max()) + 1
        return idx

    def finish(self) -> dict[str, pl.DataFrame]:
        self.state.close()
        return {}

    def _signatures(self, batch: pl.DataFrame, field: str) -> tuple[list[str], np.ndarray, list[pl.DataFrame]]:
        """Hashes and signatures of one field: stored ones from the selection's join, the rest signed here."""
        cfg, sp = self.config, self.config.sig_params()
        texts, langs = batch[field].to_list(), batch["lang"].to_list()
        signed = batch[f"{field}_signed"].to_list() if f"{field}_signed" in batch.columns else [False] * batch.height
        todo = [i for i, s in enumerate(signed) if not s]
        sigs = np.empty((batch.height, cfg.num_perm), dtype=np.uint32)
        hashes = batch[f"{field}_hash"].to_list() if f"{field}_hash" in batch.columns else [None] * batch.height
        for lang in dict.fromkeys(langs):     # stored ones: from the language's store (read by `prepare`)
            have = [i for i, (s, x) in enumerate(zip(signed, langs)) if s and x == lang]
            if have:
                sigs[have] = self.state.stores[lang].get([hashes[i] for i in have])
        new: list[pl.DataFrame] = []
        if todo:
            h, kinds, s, distinct = sign([texts[i] for i in todo], [langs[i] for i in todo], cfg.num_perm, cfg.seed,
                                         self._perms)
            sigs[todo] = s
            for i, hv in zip(todo, h):
                hashes[i] = hv
            new = [signature_rows(distinct, sp, self.run_id),
                   link_rows([batch["id"][i] for i in todo], field, h, kinds, sp, self.run_id)]
        return hashes, sigs, new

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """One language at a time: a batch that straddles two languages (the selection is ordered by language)
        would otherwise hold both languages' stores and indexes (at 1M products the clustering, sampled every
        5 s, peaked at 2.1 GB before, 1.55 GB after, with DuckDB's cap at 512 MB instead of 1 GB)."""
        self.setup()
        if batch["lang"].n_unique() == 1:
            return self._process_lang(batch)
        outs = [self._process_lang(part) for part in batch.partition_by("lang", maintain_order=True)]
        merged = {t: pl.concat([o[t] for o in outs if t in o]) for t in dict.fromkeys(t for o in outs for t in o)}
        if "minhash_signatures" in merged:
            merged["minhash_signatures"] = merged["minhash_signatures"].unique(subset=list(SIG_KEY),
                                                                           maintain_order=True)
        return merged

    def _process_lang(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        ids, langs, tasks = batch["id"].to_list(), batch["lang"].to_list(), batch["task"].to_list()
        self.state.activate(set(langs))
        verdicts: list[Verdict] = [(True, "ok", None)] * batch.height
        members, sig_rows, link_rows_ = [], [], []
        for field in self.fields():
            scopes = [f"{lang}/{t}" for lang, t in zip(langs, tasks)] if field == "anchor" else langs
            hashes, sigs, new = self._signatures(batch, field)
            if new:
                sig_rows.append(new[0])
                link_rows_.append(new[1])
            for scope in dict.fromkeys(scopes):
                rows = [i for i, s in enumerate(scopes) if s == scope]
                idx = self.indexes.setdefault((field, scope), NearDupIndex(self.config.threshold,
                                                                           self.config.num_perm))
                res = idx.add([ids[i] for i in rows], [hashes[i] for i in rows], sigs[rows])
                seq0 = self.seq.get((field, scope), 0)
                self.seq[(field, scope)] = seq0 + len(rows)
                for n, (i, (dup, exact, cluster, score)) in enumerate(zip(rows, res)):
                    members.append((ids[i], field, scope, hashes[i], shingling(langs[i]), seq0 + n,
                                    f"{field}:{cluster}", dup, exact if dup else None))
                    if field == "anchor" and dup is not None:
                        kind = "exact_dup_of" if exact else "near_dup_of"
                        verdicts[i] = (False, f"dedup:{kind}:{dup}", score)
        out = {"decisions": self.decisions(batch["id"], verdicts),
               "dedup_members": pl.DataFrame(members, orient="row", schema=MEMBER_SCHEMA).with_columns(
                   sig_params=pl.lit(self.config.sig_params()), params_hash=pl.lit(self.params_hash),
                   run_id=pl.lit(self.run_id, dtype=pl.Utf8))}
        if sig_rows:
            out["minhash_signatures"] = pl.concat(sig_rows).unique(subset=list(SIG_KEY), maintain_order=True)
            out["example_signatures"] = pl.concat(link_rows_)
        return out


def positive_cluster_ids(cat: Catalog, example_ids: list[str] | None = None) -> dict[str, str]:
    """{example id: cluster id of its positive}; two examples whose positives are (near-)copies share one.

    Mining uses it to refuse a candidate negative from the anchor's own positive cluster. Examples not yet
    seen by the dedup stage are absent (run `compass filter --stages dedup` first).
    """
    sql = "SELECT example_id, cluster_id FROM positive_clusters"
    if example_ids is None:
        return dict(cat.con.execute(sql).fetchall())
    with registered(cat.con, "_ids", pl.DataFrame({"id": example_ids}, schema={"id": pl.Utf8})):
        return dict(cat.con.execute(sql + " WHERE example_id IN (SELECT id FROM _ids)").fetchall())
