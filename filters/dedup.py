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
Signatures are stored once per (normalised text, shingling, parameters) in `minhash_signatures`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel

from compass.catalog.db import Catalog, registered
from compass.filters.base import Filter, Verdict
from compass.filters.minhash import EMPTY, estimate, first_seen, permutations, signatures
from compass.ids import params_hash
from compass.text import CHAR_NGRAM, WORD_NGRAM, normalized_hash, shingles, uses_spaces


class DedupConfig(BaseModel):
    threshold: float = 0.8
    num_perm: int = 128
    seed: int = 1
    cluster_positives: bool = True

    def sig_params(self) -> str:
        return params_hash({"num_perm": self.num_perm, "seed": self.seed, "scheme": "affine32",
                            "word_n": WORD_NGRAM, "char_n": CHAR_NGRAM})


def shingling(lang: str) -> str:
    return f"word{WORD_NGRAM}" if uses_spaces(lang) else f"char{CHAR_NGRAM}"


class NearDupIndex:
    """First-seen exact + near-duplicate matching over one scope, fed in order, batch after batch.

    `add(keys, hashes, sigs)` returns for each new item (dup_of key or None, exact?, cluster key, score).
    Exact duplicates (same normalised hash) and texts without shingles never enter the LSH part: the first
    has the same signature as its original, the second has nothing to compare.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128):
        self.threshold, self.num_perm = threshold, num_perm
        self.keys: list = []
        self.sigs = np.empty((0, num_perm), dtype=np.uint32)
        self.first_by_hash: dict[str, object] = {}
        self.cluster_of: dict[object, object] = {}

    def load(self, keys: list, hashes: list[str], sigs: np.ndarray, cluster_keys: list, dup_of: list) -> None:
        """Restore an earlier run's state (in its order) without re-judging it."""
        for k, h, c in zip(keys, hashes, cluster_keys):
            self.first_by_hash.setdefault(h, k)
            self.cluster_of[k] = c
        lsh = [i for i, d in enumerate(dup_of) if d is None or not self._exact_dup(keys[i], hashes[i])]
        lsh = [i for i in lsh if not (sigs[i] == EMPTY).all()]
        self.keys += [keys[i] for i in lsh]
        self.sigs = np.concatenate([self.sigs, sigs[lsh]])

    def copy(self) -> "NearDupIndex":
        new = NearDupIndex(self.threshold, self.num_perm)
        new.keys, new.sigs = list(self.keys), self.sigs
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
        allsigs = np.concatenate([self.sigs, sigs[lsh_rows]])
        match = first_seen(allsigs, self.threshold, start=start)
        newkeys = [keys[i] for i in lsh_rows]
        allkeys = self.keys + newkeys
        for j, i in enumerate(lsh_rows):
            m = match[start + j]
            res[i] = (None, False, None) if m < 0 else (allkeys[m], False, estimate(allsigs[m], allsigs[start + j]))
        self.keys, self.sigs = allkeys, allsigs
        out = []
        for k, (dup, exact, score) in zip(keys, res):  # in order: a duplicate's original already has its cluster
            c = k if dup is None else self.cluster_of[dup]
            self.cluster_of[k] = c
            out.append((dup, exact, c, score))
        return out


def dedup_texts(texts: list[str], lang: str, threshold: float = 0.8, num_perm: int = 128,
                seed: int = 1) -> list[int | None]:
    """In-memory first-seen dedup of `texts` (as the stage does it): index of the original, or None."""
    idx = NearDupIndex(threshold, num_perm)
    sigs = signatures([shingles(t, lang) for t in texts], num_perm, seed)
    return [d for d, _, _, _ in idx.add(list(range(len(texts))), [normalized_hash(t) for t in texts], sigs)]


class Dedup(Filter):
    """Rejects anchors that (near-)duplicate an earlier anchor of the same (lang, task); clusters positives."""

    name: ClassVar[str] = "dedup"
    batch_size: ClassVar[int] = 20000

    def __init__(self, config: DedupConfig | None = None):
        super().__init__()
        self.config = config or DedupConfig()
        self.cat: Catalog | None = None
        self.indexes: dict[tuple[str, str], NearDupIndex] = {}
        self.seq: dict[tuple[str, str], int] = {}
        self._perms = None

    def params(self) -> dict:
        return self.config.model_dump()

    def setup(self) -> None:
        if self._perms is None:
            self._perms = permutations(self.config.num_perm, self.config.seed)

    def prepare(self, cat: Catalog, pending: pl.DataFrame) -> None:
        """Load the stored members (and their signatures) of every scope this run touches."""
        self.cat = cat
        scopes = {("anchor", f"{l}/{t}") for l, t in pending.select("lang", "task").unique().iter_rows()}
        if self.config.cluster_positives:
            scopes |= {("positive", l) for l in pending["lang"].unique().to_list()}
        sp = self.config.sig_params()
        for field, scope in sorted(scopes):
            rows = cat.frame(
                "SELECT m.example_id, m.text_hash, m.cluster_id, m.dup_of, m.seq, s.signature "
                "FROM dedup_members m JOIN minhash_signatures s ON s.text_hash = m.text_hash "
                "AND s.shingling = m.shingling AND s.sig_params = m.sig_params "
                "WHERE m.field = ? AND m.scope = ? AND m.sig_params = ? ORDER BY m.seq", [field, scope, sp])
            idx = NearDupIndex(self.config.threshold, self.config.num_perm)
            if rows.height:
                sigs = np.frombuffer(b"".join(rows["signature"].to_list()), dtype="<u4").astype(np.uint32)
                idx.load(rows["example_id"].to_list(), rows["text_hash"].to_list(),
                         sigs.reshape(rows.height, self.config.num_perm),
                         [c.split(":", 1)[1] for c in rows["cluster_id"].to_list()], rows["dup_of"].to_list())
                self.seq[(field, scope)] = int(rows["seq"].max()) + 1
            self.indexes[(field, scope)] = idx

    def _signatures(self, texts: list[str], langs: list[str]) -> tuple[list[str], np.ndarray, pl.DataFrame]:
        """Hashes and signatures of texts; stored ones are read, missing ones computed (and queued for storage)."""
        cfg, sp = self.config, self.config.sig_params()
        hashes = [normalized_hash(t) for t in texts]
        kinds = [shingling(l) for l in langs]
        want = pl.DataFrame({"text_hash": hashes, "shingling": kinds}).unique()
        stored: dict[tuple[str, str], bytes] = {}
        if self.cat is not None and want.height:
            with registered(self.cat.con, "_want", want):
                for h, k, s in self.cat.con.execute(
                        "SELECT s.text_hash, s.shingling, s.signature FROM minhash_signatures s JOIN _want w "
                        "ON s.text_hash = w.text_hash AND s.shingling = w.shingling WHERE s.sig_params = ?",
                        [sp]).fetchall():
                    stored[(h, k)] = s
        todo: dict[tuple[str, str], int] = {}
        for i, key in enumerate(zip(hashes, kinds)):
            if key not in stored and key not in todo:
                todo[key] = i
        new = signatures([shingles(texts[i], langs[i]) for i in todo.values()], cfg.num_perm, cfg.seed, self._perms)
        computed = {key: new[j] for j, key in enumerate(todo)}
        sigs = np.stack([computed[key] if key in computed else np.frombuffer(stored[key], dtype="<u4")
                         for key in zip(hashes, kinds)]).astype(np.uint32) if texts else \
            np.empty((0, cfg.num_perm), dtype=np.uint32)
        rows = pl.DataFrame({"text_hash": [k[0] for k in todo], "shingling": [k[1] for k in todo],
                             "sig_params": [sp] * len(todo),
                             "signature": [computed[k].astype("<u4").tobytes() for k in todo],
                             "run_id": [self.run_id] * len(todo)},
                            schema={"text_hash": pl.Utf8, "shingling": pl.Utf8, "sig_params": pl.Utf8,
                                    "signature": pl.Binary, "run_id": pl.Utf8})
        return hashes, sigs, rows

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        self.setup()
        ids, langs, tasks = batch["id"].to_list(), batch["lang"].to_list(), batch["task"].to_list()
        fields = [("anchor", [f"{l}/{t}" for l, t in zip(langs, tasks)])]
        if self.config.cluster_positives:
            fields.append(("positive", langs))
        verdicts: list[Verdict] = [(True, "ok", None)] * batch.height
        members, sig_rows = [], []
        for field, scopes in fields:
            texts = batch[field].to_list()
            hashes, sigs, new_sigs = self._signatures(texts, langs)
            sig_rows.append(new_sigs)
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
        sp = self.config.sig_params()
        self.emit("minhash_signatures", pl.concat(sig_rows).unique(subset=["text_hash", "shingling"]),
                  ["text_hash", "shingling", "sig_params"])
        self.emit("dedup_members", pl.DataFrame(
            members, orient="row",
            schema={"example_id": pl.Utf8, "field": pl.Utf8, "scope": pl.Utf8, "text_hash": pl.Utf8,
                    "shingling": pl.Utf8, "seq": pl.Int64, "cluster_id": pl.Utf8, "dup_of": pl.Utf8,
                    "exact": pl.Boolean}).with_columns(sig_params=pl.lit(sp), run_id=pl.lit(self.run_id)),
            ["example_id", "field", "sig_params"])
        return verdicts


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
