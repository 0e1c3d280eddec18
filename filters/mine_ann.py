"""Approximate search for large candidate pools: a faiss inverted-file index (IVF-Flat, inner product).

Why: the exact search (`mine_search.stream_topk`) compares every query of a pool with every text of it, and a
pool grows with the catalog, so mining was quadratic: 38% of `mine`'s CPU at 1M products (issue 15), 21x its
time at 100k. An IVF index clusters a pool's vectors (k-means into nlist = 4 sqrt(n) lists, faiss's rule of
thumb) and compares a query only with its nlist centroids and the texts of its `nprobe` nearest lists: about
nlist + nprobe x n / nlist vectors a query instead of n, O(sqrt n).

- Flat lists, not product quantisation: the scores of what is found are the exact inner products, so the margin
  guard (which reads the scores) and the stored scores mean what they meant; what may differ from the exact
  search is only which texts are found (the recall, measured in `benchmarks/mine_ann.py`).
- IVF, not HNSW: an HNSW graph is built by threads racing to insert, so two builds of one pool differ, while a
  rerun, a resumed run and the Ray executor must mine the same negatives. IVF's k-means here trains on a fixed
  stride sample with faiss's fixed seed, and a list holds its texts in pool order.
- faiss, not a hand-written IVF: it is the maintained library for exactly this (k-means, SIMD list scans, the
  index written to and read from a file); compass only picks the sizes and turns its output into the exact
  search's (scores best first, equal scores by pool index, -1 where fewer than k texts were found).

Opt-in (`--ann-min N`, default 0: exact everywhere), because on the catalogs compass could measure it did not
pay: exact search is a matrix product at BLAS speed plus a top-k, while faiss scans lists query by query, at a
small fraction of BLAS's flop rate, and a bag-of-words (static) model's vectors cluster weakly, so a high recall
needs many lists probed (benchmarks/mine_ann.py; figures in the README). It is for pools where exact search is
out of reach (millions of texts) and for encoders whose vectors cluster. Pools below `--ann-min` keep the exact
search, and a set mined exactly keeps its id (the search enters the set's parameters only when on).
"""

from __future__ import annotations

import math

import numpy as np

from compass.errors import CompassError

MAX_TRAIN_PER_LIST = 64   # training points per list: k-means needs ~40+ a centroid (faiss warns below 39)


def _faiss():
    try:
        import faiss
    except ImportError as e:  # faiss-cpu is in the train extra, beside torch
        raise CompassError("--ann-min needs faiss: pip install 'compass-embed[train]' (it brings faiss-cpu), or "
                           "mine with exact search (--ann-min 0, the default)") from e
    return faiss


def n_lists(n: int) -> int:
    """Lists for a pool of n texts: 4 sqrt(n) (faiss's guideline for n up to a few million), 1 to n."""
    return max(1, min(n, int(round(4 * math.sqrt(n)))))


def build_index(emb: np.ndarray, path: str, chunk: int = 65536) -> str:
    """Train an IVF-Flat index on `emb` (n, d) unit-norm float32 (a memory map is read chunk by chunk), add every
    row with its row number as id, write it to `path`; returns `path`. Memory: the index holds the n vectors."""
    faiss = _faiss()
    n, d = emb.shape
    nlist = n_lists(n)
    # a fixed stride sample: the same pool always trains the same centroids (faiss's k-means seed is fixed too)
    step = max(1, n // (nlist * MAX_TRAIN_PER_LIST))
    train = np.ascontiguousarray(emb[::step], dtype=np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.min_points_per_centroid = 1       # small pools: no warning, k-means still converges
    index.train(train)
    del train
    for s in range(0, n, chunk):
        index.add(np.ascontiguousarray(emb[s:s + chunk], dtype=np.float32))   # ids: s, s+1, ... (pool order)
    faiss.write_index(index, path)
    return path


def read_index(path: str):
    return _faiss().read_index(path)


def ann_topk(index, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product from an IVF index: (scores (q, k) float32, ids (q, k) int64), best first, equal
    scores by id (as `stream_topk` orders them); where fewer than k texts were found, id -1 and score -inf."""
    index.nprobe = min(nprobe, index.nlist)
    k = min(k, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)   # (q, k) each
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    # faiss's heap breaks ties arbitrarily: order by id, then stably by score, as the exact search does
    by_id = np.argsort(np.where(ids < 0, np.iinfo(np.int64).max, ids), axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, by_id, 1), np.take_along_axis(ids, by_id, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
