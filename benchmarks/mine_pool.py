"""Benchmark: memory of `compass mine --pool products`, whose candidate side is streamed in chunks.

The real search and guard code (`mine_search.stream_topk` + `select_negatives`, margin 0.95, window 10:100,
class guard) runs on synthetic unit vectors of dimension 384, the size of MiniLM / e5-small / the static model:
each candidate chunk is generated from its own seed when the search asks for it, so the candidate side never
exists whole, as when `stream_embeddings` reads it from the catalog. The baseline, in the same run, is the
in-memory path (`mine_arrays`: the whole candidate matrix materialised, as the positives pool did before).
Each run is a fresh spawned process, so its peak RSS (ru_maxrss) is its own; time and RSS are the median of
`--repeat` runs, with min-max.

    python benchmarks/mine_pool.py                                   # 1M candidates x 100k anchors (needs cores)
    python benchmarks/mine_pool.py --anchors 2000                    # the full candidate side, fewer anchors
    python benchmarks/mine_pool.py --anchors 100000 --max-chunks 4   # the full anchor side's memory, 4 chunks
    python benchmarks/mine_pool.py --catalog 200000 --anchors 2000   # also stream from a real DuckDB catalog

Search time grows as anchors x candidates (exact search); memory does not grow with candidates. With
--max-chunks, only the first chunks are searched: the memory held is the same as for a full pass (one chunk
alive at a time), and the full pass's time is extrapolated from the per-chunk rate (printed as such).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from mine import _peak_rss_mb, child  # benchmarks/mine.py: peak RSS and the spawn-one-run helper

DIM = 384
CHUNK = 16384


def chunk(c: int, n: int, seed: int = 0) -> np.ndarray:
    """Candidate rows [c*CHUNK, ...) as unit vectors, the same every time they are asked for."""
    rows = min(CHUNK, n - c * CHUNK)
    x = np.random.default_rng([seed, c]).standard_normal((rows, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def anchors(n_cand: int, n_anchor: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor i sits near candidate pos[i] (cosine ~0.7), as a trained encoder's pairs do.

    Returns anchors (a, d), positive positions (a,) and the positives' scores (a,), as `mine` computes them
    (anchor . positive) before the search."""
    rng = np.random.default_rng(seed + 1)
    pos = np.sort(rng.choice(n_cand, size=n_anchor, replace=False))
    q = np.empty((n_anchor, DIM), dtype=np.float32)
    for c in np.unique(pos // CHUNK):
        sel = np.flatnonzero(pos // CHUNK == c)
        q[sel] = chunk(int(c), n_cand, seed)[pos[sel] - c * CHUNK]
    p = q.copy()
    q += 0.05 * rng.standard_normal(q.shape, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, pos, np.einsum("ad,ad->a", q, p).astype(np.float64)


def _guards(pos: np.ndarray):
    # class = candidate index // 3 (three listings per item): refuse the positive's siblings; vectorised over
    # (row, candidate) pairs, as the stage's guards are
    return lambda r, c: (np.zeros(len(r), bool), c // 3 == pos[r] // 3)


def run_stream(args, out) -> None:
    import torch

    from compass.filters.mine_search import GuardConfig, select_negatives, stream_topk

    q, pos, ps = anchors(args.candidates, args.anchors)
    n_chunks = -(-args.candidates // CHUNK)
    used = min(n_chunks, args.max_chunks or n_chunks)

    def chunks():
        for c in range(used):
            x = chunk(c, args.candidates)
            yield torch.arange(c * CHUNK, c * CHUNK + len(x)), torch.from_numpy(x)

    cfg = GuardConfig(depth=args.depth, lo=10, hi=100, margin=0.95, per_example=5)
    t0 = time.perf_counter()
    with torch.inference_mode():
        s, i = stream_topk(torch.from_numpy(q), chunks(), args.depth + 1, block=args.block)
    scores, idx = s.numpy(), i.numpy()
    search_s = time.perf_counter() - t0
    found = 0
    for b in range(0, len(q), 2048):                                     # the stage's batches
        sl = slice(b, b + 2048)
        m = select_negatives(scores[sl], idx[sl], pos[sl], ps[sl], cfg, pairs=_guards(pos[sl]))
        found += len(m.q)
    out.put({"wall_s": time.perf_counter() - t0, "search_s": search_s, "peak_rss_mb": _peak_rss_mb(),
             "chunks": used, "of_chunks": n_chunks, "negatives": found})


def run_memory(args, out) -> None:
    """Baseline: the in-memory path (whole candidate matrix, `mine_arrays`)."""
    from compass.filters.mine_search import GuardConfig, mine_arrays

    q, pos, _ = anchors(args.candidates, args.anchors)
    n_chunks = -(-args.candidates // CHUNK)
    used = min(n_chunks, args.max_chunks or n_chunks)
    t0 = time.perf_counter()
    corpus = np.concatenate([chunk(c, args.candidates) for c in range(used)])
    keep = pos < len(corpus)
    cfg = GuardConfig(depth=args.depth, lo=10, hi=100, margin=0.95, per_example=5)
    found = 0
    for b in range(0, len(q), 2048):
        sl = slice(b, b + 2048)
        p = np.where(keep[sl], pos[sl], -1)
        m, _ = mine_arrays(q[sl], corpus, p, cfg, pairs=_guards(pos[sl]), block=args.block)
        found += len(m.q)
    out.put({"wall_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "chunks": used, "of_chunks": n_chunks,
             "negatives": found})


def build_catalog(path: str, n: int) -> None:
    """A real catalog whose embedding cache holds n synthetic candidate vectors, and their pool table rows."""
    import pyarrow as pa

    from compass.catalog import Catalog
    from compass.catalog.db import registered

    cat = Catalog(path, create=True)
    for c in range(-(-n // CHUNK)):
        x = chunk(c, n)
        h = [f"{c * CHUNK + j:020d}" for j in range(len(x))]
        vec = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, DIM, dtype=np.int32)), pa.array(x.ravel()))
        with cat.transaction() as con, registered(con, "_b", pa.table({"h": h, "vec": vec})):
            con.execute("INSERT INTO embedding_cache (model_fp, text_hash, vec) SELECT 'bench', h, vec FROM _b")
    cat.close()


def run_catalog(args, out) -> None:
    """stream_topk fed by `stream_embeddings` from the catalog (DuckDB's share of the memory included)."""
    import torch

    from compass.catalog import Catalog
    from compass.catalog.db import duckdb_memory
    from compass.filters.mine_cache import stream_embeddings
    from compass.filters.mine_search import stream_topk

    q, pos, _ = anchors(args.catalog, args.anchors)
    cat = Catalog(args.catalog_path)
    cat.con.execute("CREATE TEMP TABLE _mine_pool AS SELECT (row_number() OVER (ORDER BY text_hash)) - 1 AS pos, "
                    "text_hash AS h FROM embedding_cache WHERE model_fp = 'bench'")
    t0 = time.perf_counter()
    chunks = ((torch.from_numpy(p), torch.from_numpy(e)) for p, e in
              stream_embeddings(cat, "bench", "_mine_pool", DIM, CHUNK))
    with torch.inference_mode(), duckdb_memory(cat, args.duckdb_memory):
        s, i = stream_topk(torch.from_numpy(q), chunks, args.depth + 1, block=args.block)
    hit = float((i.numpy() == pos[:, None]).any(1).mean())   # pos = ordinal = hash order: positives found
    out.put({"wall_s": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), "positive_found": hit})
    cat.close()


def med(runs: list[dict], key: str) -> str:
    v = [r[key] for r in runs]
    return f"{statistics.median(v):.1f} (min {min(v):.1f}, max {max(v):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--anchors", type=int, default=100_000)
    ap.add_argument("--depth", type=int, default=50, help="--top-k")
    ap.add_argument("--block", type=int, default=1 << 25, help="scores alive at once (MineConfig.block)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-chunks", type=int, default=0, help="search only the first chunks (0: all)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the in-memory baseline")
    ap.add_argument("--duckdb-memory", default="256MB", help="DuckDB memory_limit while streaming (MineConfig)")
    ap.add_argument("--catalog", type=int, default=0, help="also stream this many candidates from a DuckDB catalog")
    ap.add_argument("--catalog-path", default="", help="build (or reuse, if it exists) the catalog here")
    args = ap.parse_args()
    import torch

    print(f"mining pool: {args.candidates:,} candidates x {args.anchors:,} anchors, dim {DIM}, chunk {CHUNK:,}, "
          f"depth {args.depth}; torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus"
          + (f"; first {args.max_chunks} chunks only" if args.max_chunks else ""))
    runs = {"stream": [], "memory": []}
    for _ in range(args.repeat):               # alternate the two sides: on a shared machine, load comes and goes
        runs["stream"].append(child(run_stream, args))
        if not args.no_baseline:
            runs["memory"].append(child(run_memory, args))
    summary = {"args": vars(args), "runs": runs}
    st = runs["stream"]
    print(f"  streamed (stream_topk)       wall s {med(st, 'wall_s')}   peak RSS MB {med(st, 'peak_rss_mb')}   "
          f"{st[0]['negatives']:,} negatives")
    if st[0]["chunks"] < st[0]["of_chunks"]:
        full = statistics.median(r["search_s"] for r in st) * st[0]["of_chunks"] / st[0]["chunks"]
        print(f"  extrapolated full pass ({st[0]['of_chunks']} chunks): search ~{full:.0f} s on this machine")
        summary["extrapolated_search_s"] = full
    if runs["memory"]:
        mm = runs["memory"]
        print(f"  in memory (mine_arrays)      wall s {med(mm, 'wall_s')}   peak RSS MB {med(mm, 'peak_rss_mb')}   "
              f"{mm[0]['negatives']:,} negatives")
        rt = statistics.median(r["wall_s"] for r in st) / statistics.median(r["wall_s"] for r in mm)
        rr = statistics.median(r["peak_rss_mb"] for r in st) / statistics.median(r["peak_rss_mb"] for r in mm)
        print(f"  streamed / in memory: time {rt:.2f}x, peak RSS {rr:.2f}x; same negatives: "
              f"{st[0]['negatives'] == mm[0]['negatives']}")
        summary.update(time_ratio=rt, rss_ratio=rr)
    peak = max(r["peak_rss_mb"] for r in st)
    print(f"  streamed peak RSS {peak:.0f} MB (target < 2048 MB)")
    if args.catalog:
        with tempfile.TemporaryDirectory() as tmp:
            args.catalog_path = args.catalog_path or f"{tmp}/bench.duckdb"
            if not os.path.exists(args.catalog_path):
                t0 = time.perf_counter()
                build_catalog(args.catalog_path, args.catalog)
                print(f"  catalog with {args.catalog:,} cached vectors built in {time.perf_counter() - t0:.0f} s")
            cr = [child(run_catalog, args) for _ in range(args.repeat)]
        print(f"  streamed from the catalog ({args.catalog:,} x {args.anchors:,}): wall s {med(cr, 'wall_s')}   "
              f"peak RSS MB {med(cr, 'peak_rss_mb')}   positives retrieved {cr[0]['positive_found']:.1%}")
        summary["catalog"] = cr
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
