"""Benchmark: the IVF index of `compass mine` (large pools) against the exact search, on a mined catalog's pools.

    python benchmarks/mine_ann.py CATALOG [--pools 3] [--queries 4096] [--nprobe 32] [--reps 3]

CATALOG must have been mined (its embedding cache holds the pools' vectors; e.g. the 1M catalog of
benchmarks/scale.py after its `mine` stage). For each of the `--pools` largest (language, task) pools of kept
positives (as `mine` reads them: `mine_pool.load_pool`), `--queries` of its pending-or-not anchors (every k-th
in hash order) are searched for their top 101 (mine's default depth + 1) both ways, in the same run:

- exact: `mine_search.stream_topk` over the pool's memory-mapped vectors (the baseline, what mine did);
- IVF: `mine_ann.build_index` once (timed apart: mine builds it once a pool) and `ann_topk` at `--nprobe`.

Reported per pool: the median of `--reps` (min-max) of each time, the speed-up of the search (exact / IVF), the
time of all the pool's anchors extrapolated (build + search) against exact, and the recall: the share of the
exact top 101 found, and of the exact ranks 10-100 (mine's default window) found anywhere in the IVF top 101.
Recall does not vary between repetitions (the index is deterministic), so it is printed once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    from compass.catalog.db import Catalog
    from compass.filters.mine_ann import ann_topk, build_index, n_lists, read_index
    from compass.filters.mine_pool import PoolKey, load_pool, load_queries
    from compass.filters.mine_search import stream_topk
    from compass.text import uses_spaces

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog")
    ap.add_argument("--pools", type=int, default=3)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--nprobe", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--k", type=int, default=101)
    args = ap.parse_args()

    with Catalog(args.catalog, read_only=True) as cat, tempfile.TemporaryDirectory() as tmp:
        keys = cat.con.execute("SELECT model_fp, len(any_value(vec)) FROM embedding_cache GROUP BY model_fp "
                               "ORDER BY count(*) DESC LIMIT 1").fetchone()
        if keys is None:
            raise SystemExit(f"{args.catalog}: no embedding cache; run `compass mine` on it first")
        fp, dim = keys
        pools = cat.con.execute("SELECT lang, task, count(DISTINCT positive) AS n FROM kept_examples GROUP BY ALL "
                                "ORDER BY n DESC LIMIT ?", [args.pools]).fetchall()
        print(f"{args.catalog}: encoder key {fp[:12]}, dim {dim}; {args.queries} queries a pool, k {args.k}, "
              f"nprobe {args.nprobe}, {args.reps} reps, torch threads {torch.get_num_threads()}")
        print("| pool | texts | lists | exact s | IVF search s | search speed-up | build s | all anchors: exact s | "
              "all anchors: build + IVF s | recall@101 | recall ranks 10-100 |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for lang, task, _ in pools:
            key = PoolKey(lang, task, "*", "positives")
            pool = load_pool(cat, key, None, fp, dim, tmp, {uses_spaces(lang)})
            qs = load_queries(cat, "SELECT substr(sha256(anchor), 1, 20) AS h FROM kept_examples WHERE lang = ? "
                                   "AND task = ?", [lang, task], fp, dim, os.path.join(tmp, f"q-{lang}-{task}.npy"))
            n_anchor = len(qs.hashes)
            step = max(1, n_anchor // args.queries)
            q = np.array(qs.emb[::step][:args.queries], dtype=np.float32)
            exact_t, ivf_t, build_t = [], [], []
            for _ in range(args.reps):
                t = time.perf_counter()
                with torch.inference_mode():
                    es, ei = stream_topk(torch.from_numpy(q), pool.chunks(16384), args.k, block=1 << 25)
                exact_t.append(time.perf_counter() - t)
                path = os.path.join(tmp, "ivf.faiss")
                t = time.perf_counter()
                build_index(pool.emb, path)
                build_t.append(time.perf_counter() - t)
                index = read_index(path)
                t = time.perf_counter()
                s, i = ann_topk(index, q, args.k, args.nprobe)
                ivf_t.append(time.perf_counter() - t)
            ei = ei.numpy()
            rec = np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(i, ei)])
            win = np.mean([len(set(a) & set(b[10:100])) / max(1, len(b[10:100])) for a, b in zip(i, ei)])
            e, v, b = (statistics.median(x) for x in (exact_t, ivf_t, build_t))
            scale = n_anchor / len(q)
            print(f"| {lang}/{task} | {len(pool):,} | {n_lists(len(pool)):,} | {med(exact_t)} | {med(ivf_t)} | "
                  f"{e / v:.1f}x | {med(build_t)} | {e * scale:.1f} | {b + v * scale:.1f} | {rec:.3f} | "
                  f"{win:.3f} |", flush=True)


if __name__ == "__main__":
    main()
