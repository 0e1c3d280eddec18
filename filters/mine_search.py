"""Exact nearest-neighbour search and the guards that turn neighbours into hard negatives.

Pure array code (no catalog, no model), so the benchmark and the stage share it.

Why not `sentence_transformers.util.semantic_search`: it returns one Python dict per hit and merges corpus chunks
in a Python heap, which for 10k queries x 100 hits is a million dicts; the guards below want the hits as
tensors. The search itself is the same idea (chunked matrix products + torch.topk), kept to a few lines.
Why not FAISS for the exact search: on CPU its flat index does the same matrix products, on a matrix held in
memory, where this streams a memory-mapped pool. faiss serves the approximate search (`mine_ann`, opt-in).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from compass.text import normalize, shingles

# Refusal reasons in the order they are checked; a candidate is counted under the first guard that refuses it.
# Semantic guards come first so their counts say how many false negatives each one prevented.
GUARDS = ("near_dup", "class", "margin", "rank")


def stream_topk(queries: torch.Tensor, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int,
                block: int = 1 << 26) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product over a corpus that arrives in chunks and is never held whole.

    queries (q, d); chunks yield (ids (nc,) long, emb (nc, d)), ids being each row's corpus index (any order,
    each row once). Returns scores (q, k') and indices (q, k'), best first, k' = min(k, rows seen). Alive at once:
    one chunk, the running best (q, k) and at most `block` scores (q_chunk x nc floats, 256 MB at the default):
    bounded whatever the corpus size, yet large enough that each matrix product runs at full BLAS speed.
    """
    nq = queries.shape[0]
    best_s = torch.full((nq, k), -torch.inf, dtype=queries.dtype, device=queries.device)
    best_i = torch.full((nq, k), -1, dtype=torch.long, device=queries.device)
    seen = 0
    for ids, emb in chunks:
        nc = emb.shape[0]
        if nc == 0 or nq == 0:
            continue
        seen += nc
        ids = ids.to(queries.device)
        emb = emb.to(device=queries.device, dtype=queries.dtype)
        q_chunk = max(1, block // nc)
        for qs in range(0, nq, q_chunk):
            s = queries[qs:qs + q_chunk] @ emb.T                                   # (qc, nc)
            ts, ti = torch.topk(s, min(k, nc), dim=1, sorted=False)
            del s
            # merge with the best of the chunks before; -inf padding loses to any real score
            ms, pos = torch.topk(torch.cat([best_s[qs:qs + q_chunk], ts], 1), k, dim=1, sorted=False)
            mi = torch.gather(torch.cat([best_i[qs:qs + q_chunk], ids[ti]], 1), 1, pos)
            best_s[qs:qs + q_chunk], best_i[qs:qs + q_chunk] = ms, mi
    kk = min(k, seen)
    # sort only the k kept, once: by score, equal scores by corpus index, so exact ties (two texts a bag-of-words
    # model embeds alike) come out in one order whatever order the chunks arrived in
    by_id = torch.argsort(best_i, dim=1)
    best_s, best_i = torch.gather(best_s, 1, by_id), torch.gather(best_i, 1, by_id)
    best_s, order = torch.sort(best_s, dim=1, descending=True, stable=True)
    return best_s[:, :kk], torch.gather(best_i, 1, order)[:, :kk]


def chunked_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int,
                 block: int = 1 << 26) -> tuple[torch.Tensor, torch.Tensor]:
    """`stream_topk` over an in-memory corpus (n, d), cut into chunks that leave room for 64 queries a block."""
    n = corpus.shape[0]
    n_chunk = max(1, min(n, max(k, block // 64)))
    ids = torch.arange(n, device=corpus.device)
    return stream_topk(queries, ((ids[cs:cs + n_chunk], corpus[cs:cs + n_chunk]) for cs in range(0, n, n_chunk)),
                       k, block=block)


# --- vectorised guards: each text's keys computed once, pairs compared as arrays -------------------------------
# Why not `compass.text.jaccard` per candidate (the pre-port guard): the profile of issue 15 put a quarter of the
# mining time in that Python loop. A text's shingles and normalised form are computed once per pool (in Python:
# `compass.text` is the one definition of both), hashed to 64-bit ints, and every (example, candidate) pair of a
# batch is then compared with joins in polars. A hash collision (odds about 2^-64 per compared pair of keys)
# would count as a shared shingle / equal text; nothing else differs from `compass.text.is_near_duplicate`.


def hash_strings(values: list[str]) -> np.ndarray:
    """Deterministic (fixed seed, same polars version in every process) 64-bit hashes, (n,) uint64."""
    return pl.Series(values, dtype=pl.Utf8).hash(seed=0).to_numpy()


@dataclass
class Sets:
    """A set of int64 keys per item, in CSR form: item i's keys are val[off[i]:off[i + 1]], unique, sorted."""

    off: np.ndarray   # (n + 1,) int64
    val: np.ndarray   # (nnz,) int64 / uint64

    @classmethod
    def from_pairs(cls, owner: np.ndarray, val: np.ndarray, n: int) -> Sets:
        # numpy, not a polars unique().sort(): at 1M products a pool's 5M+ shingle pairs took polars' parallel
        # unique and sort 1.3 GB above the process (the largest spike of `mine`); a lexsort holds one index array
        owner = owner.astype(np.int64, copy=False)
        order = np.lexsort((val, owner))
        o, v = owner[order], val[order]
        del order
        keep = np.ones(len(o), bool)
        keep[1:] = (o[1:] != o[:-1]) | (v[1:] != v[:-1])
        o, v = o[keep], v[keep]
        counts = np.bincount(o, minlength=n)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), v)

    @classmethod
    def from_lists(cls, lists: list, dtype=np.int64) -> Sets:
        lens = np.fromiter((len(x) for x in lists), np.int64, len(lists))
        val = np.fromiter((v for x in lists for v in x), dtype, int(lens.sum()))
        return cls.from_pairs(np.repeat(np.arange(len(lists)), lens), val, len(lists))

    def size(self, items: np.ndarray) -> np.ndarray:
        return self.off[items + 1] - self.off[items]

    def gather(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner (m,), keys (m,)): the keys of items[0], items[1], ... with the index into `items` owning each."""
        lens = self.size(items)
        owner = np.repeat(np.arange(len(items)), lens)
        start = np.repeat(self.off[items] - (np.cumsum(lens) - lens), lens)
        return owner, self.val[start + np.arange(int(lens.sum()))]


def common(a: Sets, ai: np.ndarray, b: Sets, bi: np.ndarray) -> np.ndarray:
    """(m,) how many keys set a[ai[t]] and set b[bi[t]] share, for every pair t (exact)."""
    out = np.zeros(len(ai), np.int64)
    oa, va = a.gather(ai)
    ob, vb = b.gather(bi)
    if not (len(oa) and len(ob)):
        return out
    if len(ai) < 2**31 and max(int(va.max()), int(vb.max())) < 2**32 and min(int(va.min()), int(vb.min())) >= 0:
        # small keys (dense ids): (pair, key) packed in one int64 and sorted; keys are unique within a set, so
        # a key repeated within one pair is a shared key (measured: half the CPU of a polars join)
        k = np.sort(np.concatenate([(oa.astype(np.int64) << 32) | va.astype(np.int64),
                                    (ob.astype(np.int64) << 32) | vb.astype(np.int64)]))
        return np.bincount(k[1:][k[1:] == k[:-1]] >> 32, minlength=len(ai)).astype(np.int64)
    hit = pl.DataFrame({"o": oa, "v": va}).join(pl.DataFrame({"o": ob, "v": vb}), on=["o", "v"]).group_by("o").len()
    out[hit["o"].to_numpy()] = hit["len"].to_numpy()
    return out


WIDTH = 8  # keys per set compared by broadcasting; pairs with a longer (prefix of a) set go to `common`


def _padded(s: Sets, items: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, WIDTH) the first min(lens, WIDTH) keys of each item, and which of them are real."""
    w = np.arange(WIDTH)
    valid = w[None, :] < np.minimum(lens, WIDTH)[:, None]
    if not len(s.val):
        return np.zeros((len(items), WIDTH), s.val.dtype), valid
    return s.val[np.where(valid, s.off[items][:, None] + w[None, :], 0)], valid


def share(a: Sets, ai: np.ndarray, b: Sets, bi: np.ndarray, la: np.ndarray | None = None,
          lb: np.ndarray | None = None) -> np.ndarray:
    """(m,) do the first la[t] keys of a[ai[t]] and the first lb[t] keys of b[bi[t]] (default: all) share one?

    Why not `common` alone: a polars join per batch of pairs cost more than the guard loop it replaced (it was
    the largest CPU cost of mining after the port). Small sets, the usual case (a text's classes, a title's
    shingle prefix), are compared by broadcasting (m, WIDTH, WIDTH); only pairs with a longer one take the join."""
    la = a.size(ai) if la is None else np.minimum(la, a.size(ai))
    lb = b.size(bi) if lb is None else np.minimum(lb, b.size(bi))
    va, ma = _padded(a, ai, la)
    vb, mb = _padded(b, bi, lb)
    hit = ((va[:, :, None] == vb[:, None, :]) & ma[:, :, None] & mb[:, None, :]).any(axis=(1, 2))
    t = np.flatnonzero(~hit & ((la > WIDTH) | (lb > WIDTH)))
    if len(t):
        hit[t] = common(_prefix(a, ai[t], la[t]), np.arange(len(t)), _prefix(b, bi[t], lb[t]), np.arange(len(t))) > 0
    return hit


def _prefix(s: Sets, items: np.ndarray, lens: np.ndarray) -> Sets:
    """The first lens[t] keys of each item, as a Sets over 0..len(items)-1."""
    lens = np.minimum(lens, s.size(items))
    start = np.repeat(s.off[items] - (np.cumsum(lens) - lens), lens)
    return Sets(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), s.val[start + np.arange(int(lens.sum()))])


def prefix_len(size: np.ndarray, threshold: float) -> np.ndarray:
    """Prefix filter for Jaccard (Chaudhuri et al. 2006; Bayardo et al. 2007): with each set's keys in one global
    order (here: sorted hashes), J(A, B) >= t implies that the first |A| - ceil(t|A|) + 1 keys of A and the first
    |B| - ceil(t|B|) + 1 of B share one. The epsilon only lengthens a prefix (always safe) against float noise."""
    return np.where(size > 0, size - np.ceil(threshold * size - 1e-9).astype(np.int64) + 1, 0)


@dataclass
class TextKeys:
    """What the near-duplicate guard needs of each text: its normalised form and shingles, hashed, once.

    shingles: {uses_spaces: Sets}, computed for the script kinds asked for (the shingling depends only on it:
    word n-grams for spaced scripts, character n-grams for th/lo/km/my).
    """

    norm: np.ndarray                   # (n,) uint64 hash of compass.text.normalize(text)
    shingles: dict[bool, Sets]

    @classmethod
    def build(cls, texts: list[str], spaced: Iterable[bool] = (True,), chunk: int = 20000) -> TextKeys:
        norm = hash_strings([normalize(t) for t in texts])
        sh = {}
        for sp in sorted(set(spaced)):
            lang = "en" if sp else "th"              # representatives: shingles() reads only uses_spaces(lang)
            # hashed `chunk` texts at a time: a large pool's shingles as Python strings at once were 400+ MB
            owners, hashes = [np.zeros(0, np.int64)], [np.zeros(0, np.uint64)]
            for s in range(0, len(texts), chunk):
                lists = [shingles(t, lang) for t in texts[s:s + chunk]]
                lens = np.fromiter(map(len, lists), np.int64, len(lists))
                owners.append(np.repeat(np.arange(s, s + len(lists)), lens))
                hashes.append(hash_strings([x for sh_ in lists for x in sh_]) if lens.sum() else np.zeros(0, np.uint64))
            flat = np.concatenate(hashes)
            del hashes
            flat = pl.Series(flat).rank("dense").to_numpy().astype(np.int64)   # dense ids: `common` packs them
            sh[sp] = Sets.from_pairs(np.concatenate(owners), flat, len(texts))
        return cls(norm, sh)

    def near_dup(self, i: np.ndarray, j: np.ndarray, spaced: np.ndarray, threshold: float | None,
                 clusters: Sets | None = None) -> np.ndarray:
        """(m,) is text j[t] a near-duplicate of text i[t] (read as a spaced script or not: spaced[t])?

        As `compass.text.is_near_duplicate`, plus a shared dedup cluster (when the dedup stage clustered them)."""
        dup = self.norm[i] == self.norm[j]
        if clusters is not None:
            dup |= share(clusters, i, clusters, j)
        if threshold is not None:
            for sp, sets in self.shingles.items():
                t = np.flatnonzero(~dup & (spaced == sp))
                if not len(t):
                    continue
                si, sj = sets.size(i[t]), sets.size(j[t])
                dup[t] = (si == 0) & (sj == 0)                                  # Jaccard of two empty sets: 1
                # only pairs whose prefixes share a shingle can reach the threshold: the exact count for those
                u = np.flatnonzero(share(sets, i[t], sets, j[t], prefix_len(si, threshold), prefix_len(sj, threshold)))
                if len(u):
                    inter = common(sets, i[t[u]], sets, j[t[u]])
                    union = si[u] + sj[u] - inter
                    dup[t[u]] = np.where(union == 0, 1.0, inter / np.maximum(union, 1)) >= threshold
        return dup


@dataclass(frozen=True)
class GuardConfig:
    """What makes a retrieved candidate an acceptable negative.

    rank window [lo, hi): ranks count retrieved texts other than the example's own positive, from 0; `depth`
    texts are retrieved (hi is capped at depth). margin: refuse a candidate scoring above the positive-aware
    threshold `pos - |pos| * (1 - margin)` (= margin x pos for a positive pos; NV-Retriever TopK-PercPos,
    sentence-transformers' relative_margin = 1 - margin); None disables it.
    """

    depth: int = 50
    lo: int = 10
    hi: int = 100
    margin: float | None = 0.95
    per_example: int = 5


@dataclass
class Mined:
    """Result of one batch: negatives as parallel arrays plus per-query counts."""

    q: np.ndarray          # (m,) query row of each negative
    rank: np.ndarray       # (m,)
    cand: np.ndarray       # (m,) corpus index
    score: np.ndarray      # (m,)
    examined: np.ndarray   # (b,)
    refused: dict          # guard -> (b,) counts
    positive_retrieved: np.ndarray  # (b,) bool


# (rows (m,), candidates (m,)) -> (near_dup (m,), same_class (m,)) booleans for those pairs
PairGuards = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _from_callables(same_class, near_dup) -> PairGuards | None:
    """Per-pair Python guards as a PairGuards (for tests and callers with a few pairs)."""
    if same_class is None and near_dup is None:
        return None

    def pairs(r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nd = np.array([bool(near_dup(int(a), int(b))) for a, b in zip(r, c)] if near_dup else [False] * len(r), bool)
        cl = np.array([bool(same_class(int(a), int(b))) for a, b in zip(r, c)] if same_class else [False] * len(r),
                      bool)
        return nd, cl
    return pairs


def select_negatives(scores: np.ndarray, idx: np.ndarray, pos_idx: np.ndarray, pos_score: np.ndarray,
                     cfg: GuardConfig, same_class: Callable[[int, int], bool] | None = None,
                     near_dup: Callable[[int, int], bool] | None = None, pairs: PairGuards | None = None,
                     columns: int = 16) -> Mined:
    """Walk each query's candidates best first, keep the first `per_example` that pass every guard.

    scores, idx: (b, k) from `stream_topk` with k >= depth + 1 (room for the positive); pos_idx (b,) corpus index
    of each query's positive (-1: not in the corpus); pos_score (b,), NaN where unknown (no margin then).
    The per-pair guards come as `pairs` (vectorised over pairs) or as same_class(row, cand) / near_dup(row, cand)
    callables (None: off). Candidates are examined in rank order until the quota is filled, so the refusal counts
    cover the candidates a query actually looked at. The walk is array code: every candidate gets the code of the
    first guard refusing it, and the quota is a cumulative sum; the pair guards are evaluated `columns` ranks at
    a time, only for the queries whose quota is still open (most fill theirs in the first ranks).
    """
    b, k = scores.shape
    pairs = pairs or _from_callables(same_class, near_dup)
    is_pos = idx == pos_idx[:, None]                                    # (b, k)
    rank = np.cumsum(~is_pos, axis=1) - 1                               # rank among non-positive texts
    live = ~is_pos & (rank < cfg.depth) & (idx >= 0)                    # the retrieved candidates (-1: none)
    code = np.zeros((b, k), np.int8)                                    # 0 kept, g + 1: refused by GUARDS[g]
    code[(rank < cfg.lo) | (rank >= min(cfg.hi, cfg.depth))] = 4
    if cfg.margin is not None:
        thr = pos_score - np.abs(pos_score) * (1.0 - cfg.margin)        # (b,)
        thr = np.where(np.isnan(pos_score), np.inf, thr)                # positive's score unknown: no margin
        code[scores > thr[:, None]] = 3
    if pairs is not None:
        kept = np.zeros(b, np.int64)
        for c0 in range(0, k, columns):
            block = live[:, c0:c0 + columns] & (kept < cfg.per_example)[:, None]
            r, j = np.nonzero(block)
            if len(r):
                j = j + c0
                nd, cl = pairs(r, idx[r, j])
                code[r[cl], j[cl]] = 2
                code[r[nd], j[nd]] = 1
            kept += (block & (code[:, c0:c0 + columns] == 0)).sum(1)
    ok = live & (code == 0)
    before = np.cumsum(ok, axis=1) - ok                                 # kept candidates ranked above
    examined = live & (before < cfg.per_example)                        # (cells not evaluated are never examined)
    take = examined & ok
    q, j = np.nonzero(take)
    return Mined(q=q.astype(np.int64), rank=rank[q, j].astype(np.int64), cand=idx[q, j].astype(np.int64),
                 score=scores[q, j].astype(np.float64), examined=examined.sum(1).astype(np.int64),
                 refused={g: (examined & (code == i + 1)).sum(1).astype(np.int64) for i, g in enumerate(GUARDS)},
                 positive_retrieved=is_pos.any(axis=1))


def mine_arrays(q_emb: np.ndarray, c_emb: np.ndarray, pos_idx: np.ndarray, cfg: GuardConfig,
                same_class=None, near_dup=None, block: int = 1 << 26, device: str = "cpu",
                pairs: PairGuards | None = None) -> tuple[Mined, np.ndarray]:
    """Search + guards for unit-norm embeddings: q_emb (b, d), c_emb (n, d). Returns (mined, pos_score (b,))."""
    q = torch.from_numpy(np.ascontiguousarray(q_emb, dtype=np.float32)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(c_emb, dtype=np.float32)).to(device)
    has = torch.from_numpy(pos_idx >= 0).to(device)
    safe = torch.from_numpy(np.where(pos_idx >= 0, pos_idx, 0)).to(device)
    pos_score = torch.where(has, (q * c[safe]).sum(1), torch.full((), torch.nan, device=device))   # (b,)
    with torch.inference_mode():
        s, i = chunked_topk(q, c, cfg.depth + 1, block=block)
    pos = pos_score.cpu().numpy().astype(np.float64)
    mined = select_negatives(s.cpu().numpy(), i.cpu().numpy(), pos_idx, pos, cfg, same_class, near_dup, pairs)
    return mined, pos
