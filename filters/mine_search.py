"""Exact nearest-neighbour search and the guards that turn neighbours into hard negatives.

Pure array code (no catalog, no model), so the benchmark and the stage share it.

Why not `sentence_transformers.util.semantic_search`: it returns one Python dict per hit and merges corpus chunks
in a Python heap, which for 10k queries x 100 hits is a million dicts; the guards below want the hits as
tensors. The search itself is the same idea (chunked matrix products + torch.topk), kept to a few lines.
Why not FAISS: for exact inner-product search on CPU it is a flat index doing the same matrix products, and it
is not a dependency of compass; at the sizes a catalog holds per pool the chunked matmul is enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from compass.text import jaccard, normalize, shingles

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
    best_s, order = torch.sort(best_s, dim=1, descending=True)                     # sort only the k kept, once
    return best_s[:, :kk], torch.gather(best_i, 1, order)[:, :kk]


def chunked_topk(queries: torch.Tensor, corpus: torch.Tensor, k: int,
                 block: int = 1 << 26) -> tuple[torch.Tensor, torch.Tensor]:
    """`stream_topk` over an in-memory corpus (n, d), cut into chunks that leave room for 64 queries a block."""
    n = corpus.shape[0]
    n_chunk = max(1, min(n, max(k, block // 64)))
    ids = torch.arange(n, device=corpus.device)
    return stream_topk(queries, ((ids[cs:cs + n_chunk], corpus[cs:cs + n_chunk]) for cs in range(0, n, n_chunk)),
                       k, block=block)


class NearDup:
    """`compass.text.is_near_duplicate` over corpus indices, with each text normalised and shingled once.

    The same corpus text is checked against many positives, so memoising its shingle set (per language: the
    shingling depends on it) makes the guard a set intersection per pair.
    """

    def __init__(self, texts: list[str], threshold: float | None = 0.8, clusters: list[frozenset] | None = None):
        # clusters: per text, the dedup stage's near-duplicate clusters it belongs to (when that stage ran);
        # sharing one is a near-duplicate whatever the Jaccard check below says.
        self.texts, self.threshold, self.clusters, self._memo = texts, threshold, clusters, {}

    def _get(self, i: int, lang: str) -> tuple[str, set]:
        key = (i, lang)
        got = self._memo.get(key)
        if got is None:
            t = self.texts[i]
            got = self._memo[key] = (normalize(t), shingles(t, lang))
        return got

    def normalized(self, i: int) -> str:
        return self._get(i, "en")[0]   # normalisation does not depend on the language

    def __call__(self, i: int, j: int, lang: str) -> bool:
        """Is corpus text j a near-duplicate of corpus text i (read as `lang`)?"""
        if self.clusters is not None and not self.clusters[i].isdisjoint(self.clusters[j]):
            return True
        ni, si = self._get(i, lang)
        nj, sj = self._get(j, lang)
        return ni == nj or (self.threshold is not None and jaccard(si, sj) >= self.threshold)


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


def select_negatives(scores: np.ndarray, idx: np.ndarray, pos_idx: np.ndarray, pos_score: np.ndarray,
                     cfg: GuardConfig, same_class: Callable[[int, int], bool] | None = None,
                     near_dup: Callable[[int, int], bool] | None = None) -> Mined:
    """Walk each query's candidates best first, keep the first `per_example` that pass every guard.

    scores, idx: (b, k) from `stream_topk` with k >= depth + 1 (room for the positive); pos_idx (b,) corpus index
    of each query's positive (-1: not in the corpus); pos_score (b,), NaN where unknown (no margin then).
    same_class(row, cand) and near_dup(row, cand) are the per-pair guards (None: off). Candidates are examined in rank order until the quota is filled, so the
    refusal counts cover the candidates a query actually looked at.
    """
    b = scores.shape[0]
    is_pos = idx == pos_idx[:, None]                                    # (b, k)
    rank = np.cumsum(~is_pos, axis=1) - 1                               # rank among non-positive texts
    live = ~is_pos & (rank < cfg.depth)                                 # the retrieved candidates
    if cfg.margin is None:
        over = np.zeros_like(live)
    else:
        thr = pos_score - np.abs(pos_score) * (1.0 - cfg.margin)        # (b,)
        thr = np.where(np.isnan(pos_score), np.inf, thr)                # positive's score unknown: no margin
        over = scores > thr[:, None]
    outside = (rank < cfg.lo) | (rank >= min(cfg.hi, cfg.depth))
    refused = {g: np.zeros(b, dtype=np.int64) for g in GUARDS}
    examined = np.zeros(b, dtype=np.int64)
    out_q, out_r, out_c, out_s = [], [], [], []
    # The per-pair guards are Python calls, so this loop is per candidate; it stops at per_example and the
    # vectorised masks above carry the cheap guards.
    for r in range(b):
        found = 0
        for j in np.flatnonzero(live[r]):
            c = int(idx[r, j])
            examined[r] += 1
            if near_dup is not None and near_dup(r, c):
                refused["near_dup"][r] += 1
            elif same_class is not None and same_class(r, c):
                refused["class"][r] += 1
            elif over[r, j]:
                refused["margin"][r] += 1
            elif outside[r, j]:
                refused["rank"][r] += 1
            else:
                out_q.append(r)
                out_r.append(int(rank[r, j]))
                out_c.append(c)
                out_s.append(float(scores[r, j]))
                found += 1
                if found >= cfg.per_example:
                    break
    return Mined(q=np.asarray(out_q, dtype=np.int64), rank=np.asarray(out_r, dtype=np.int64),
                 cand=np.asarray(out_c, dtype=np.int64), score=np.asarray(out_s, dtype=np.float64),
                 examined=examined, refused=refused, positive_retrieved=is_pos.any(axis=1))


def mine_arrays(q_emb: np.ndarray, c_emb: np.ndarray, pos_idx: np.ndarray, cfg: GuardConfig,
                same_class=None, near_dup=None, block: int = 1 << 26, device: str = "cpu") -> tuple[Mined, np.ndarray]:
    """Search + guards for unit-norm embeddings: q_emb (b, d), c_emb (n, d). Returns (mined, pos_score (b,))."""
    q = torch.from_numpy(np.ascontiguousarray(q_emb, dtype=np.float32)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(c_emb, dtype=np.float32)).to(device)
    has = torch.from_numpy(pos_idx >= 0).to(device)
    safe = torch.from_numpy(np.where(pos_idx >= 0, pos_idx, 0)).to(device)
    pos_score = torch.where(has, (q * c[safe]).sum(1), torch.full((), torch.nan, device=device))   # (b,)
    with torch.inference_mode():
        s, i = chunked_topk(q, c, cfg.depth + 1, block=block)
    pos = pos_score.cpu().numpy().astype(np.float64)
    mined = select_negatives(s.cpu().numpy(), i.cpu().numpy(), pos_idx, pos, cfg, same_class, near_dup)
    return mined, pos
