"""How much of a difference between two models on the eval tasks is noise: paired bootstrap and probe C.

    python benchmarks/dev_noise.py ../shared/data/eval-dev BASE MODEL [MODEL ...] [--boot 2000] [--json FILE]
        [--cache DIR] [--tasks a,b] [--catalog demo.duckdb] [--merge-t T]

--cache DIR keeps each model's per-example scores, one file per task, written as each task finishes: several
processes can score models side by side (one --cache), and a killed run resumes. --merge-t T scores the SLERP merge
(`compass merge BASE MODEL --t T`) of the first two models instead of the second one, saved under the cache.
--catalog adds the catalog's test split (queries against every title of their language) as tasks.

For every task, the per-example scores of each model (classification: 1 if the linear probe, fitted exactly as
`compass eval` fits it, is right; retrieval: the query's nDCG@10) against the first model (the base), as the mean
difference x100 with a 95% paired-bootstrap interval over the test examples. A target such as "lose at most 1
point on any task" means little where one test example is worth more than a point (64 examples: 1.6 points).

It also prints each classification task's test accuracy at every C of the probe's grid: `compass eval` picks C by
5-fold CV on the training half, and when two models' CV picks a different C their accuracy can move by points with
no change in what the embedding holds (macro-F1 shows it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def per_query_ndcg10(model, queries: dict, corpus: dict, qrels: dict, docs: dict | None = None) -> np.ndarray:
    """(n_queries,) nDCG@10 with binary relevance, as sentence-transformers' evaluator computes it per query.
    ``docs``: id(corpus) -> (n_docs, dim) embeddings, filled here, so tasks sharing a corpus encode it once."""
    qids, dids = list(queries), list(corpus)
    q = model.encode_query([queries[i] for i in qids], batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
    docs = {} if docs is None else docs
    if id(corpus) not in docs:
        docs[id(corpus)] = model.encode_document([corpus[i] for i in dids], batch_size=64, convert_to_numpy=True,
                                                 normalize_embeddings=True)
    d = docs[id(corpus)]
    top = np.argsort(-(q @ d.T), axis=1)[:, :10]  # (n_queries, 10) corpus indices, best first
    out = np.zeros(len(qids))
    for i, qid in enumerate(qids):
        rel = qrels[qid]
        gains = np.array([1.0 if dids[j] in rel else 0.0 for j in top[i]])
        dcg = float((gains / np.log2(np.arange(2, 2 + len(gains)))).sum())  # fewer than 10 docs: all of them
        idcg = float((1.0 / np.log2(np.arange(2, 2 + min(len(rel), 10)))).sum())
        out[i] = dcg / idcg
    return out


def classification_scores(model, train: list[dict], test: list[dict]) -> tuple[np.ndarray, dict, dict]:
    """Per-example correctness (n_test,) of compass's probe, its chosen C and macro-F1, and accuracy at every C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from compass.train.evaluate import PROBE_CS, fit_probe

    x_tr = model.encode_query([r["text"] for r in train], batch_size=64, convert_to_numpy=True).astype("float32")
    x_te = model.encode_query([r["text"] for r in test], batch_size=64, convert_to_numpy=True).astype("float32")
    y_tr, y_te = [str(r["label"]) for r in train], np.array([str(r["label"]) for r in test])
    probe, c, _ = fit_probe(x_tr, y_tr)
    pred = probe.predict(x_te)
    info = {"C": c, "f1": 100 * f1_score(y_te, pred, average="macro")}
    per_c = {}
    for cc in PROBE_CS:
        p = make_pipeline(StandardScaler(), LogisticRegression(C=cc, max_iter=1000, random_state=42)).fit(x_tr, y_tr)
        per_c[cc] = 100 * float((p.predict(x_te) == y_te).mean())
    return (pred == y_te).astype(float), info, per_c


def _task_list(eval_dir: Path, only: list[str] | None, catalog: Path | None) -> list[tuple[str, str, object]]:
    """(name, kind, payload) for every task to score: eval folders first, then the catalog's test queries."""
    from compass.train.evaluate import discover_tasks

    order = {name: i for i, name in enumerate(only or [])}  # the order asked for: the tasks that matter first
    out = sorted(((t.name, t.kind, t.path) for t in discover_tasks(eval_dir) if not only or t.name in only),
                 key=lambda t: order.get(t[0], len(order)))
    if catalog is not None:
        from compass.catalog.db import Catalog
        from compass.train.eval_catalog import catalog_retrieval_tasks

        with Catalog(catalog, read_only=True) as cat:
            out += [(name, "catalog", qcr) for name, _, qcr in catalog_retrieval_tasks(cat, "test")
                    if not only or name in only or "catalog" in only]
    return out


def score_all(model_path: str, tasks: list[tuple[str, str, object]], cache: Path | None) -> dict:
    from compass.train.evaluate import _read_jsonl, load_model, read_beir

    slug = Path(model_path).name if Path(model_path).name != "e5-small" else "e5-untouched"
    model, out, docs = None, {}, {}
    for name, kind, payload in tasks:
        f = cache / f"{slug}__{name}.json" if cache else None
        if f is not None and f.exists():
            r = json.loads(f.read_text(encoding="utf-8"))
            out[name] = {**r, "per_example": np.array(r["per_example"])}
            continue
        if model is None:
            model = load_model(model_path, "cpu", "fp32")
        if kind == "retrieval":
            out[name] = {"per_example": per_query_ndcg10(model, *read_beir(payload))}
        elif kind == "catalog":
            out[name] = {"per_example": per_query_ndcg10(model, *payload, docs=docs)}
        else:
            ok, info, per_c = classification_scores(model, _read_jsonl(payload / "train.jsonl", ("text", "label")),
                                                    _read_jsonl(payload / "test.jsonl", ("text", "label")))
            out[name] = {"per_example": ok, **info, "per_c": per_c}
        out[name]["type"] = "classification" if kind == "classification" else "retrieval"
        out[name]["source"] = "catalog" if kind == "catalog" else "tasks"
        print(f"  {slug} {name}: {100 * out[name]['per_example'].mean():.1f}", flush=True)
        if f is not None:
            f.write_text(json.dumps({**out[name], "per_example": out[name]["per_example"].tolist()}),
                         encoding="utf-8")
    return out


def paired_ci(a: np.ndarray, b: np.ndarray, boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a (x100) and its 95% percentile interval over `boot` resamples of the test examples."""
    rng = np.random.default_rng(seed)
    diff = b - a
    means = diff[rng.integers(0, len(diff), size=(boot, len(diff)))].mean(axis=1)
    return 100 * diff.mean(), 100 * np.percentile(means, 2.5), 100 * np.percentile(means, 97.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("models", nargs="+", help="the base first, then the models compared with it")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--tasks", default="", help="comma list of task names to score (default: all)")
    ap.add_argument("--catalog", type=Path, default=None)
    ap.add_argument("--merge-t", type=float, default=None)
    a = ap.parse_args()
    if a.cache:
        a.cache.mkdir(parents=True, exist_ok=True)
    if a.merge_t is not None:
        if len(a.models) != 2 or a.cache is None:
            raise SystemExit("--merge-t needs exactly two models (base, fine-tune) and --cache")
        merged = a.cache / f"e5-merge-t{a.merge_t:g}"
        if not (merged / "modules.json").exists():
            from compass.train.merge import merge_models

            merge_models(a.models[0], a.models[1], a.merge_t, merged)
        a.models = [a.models[0], str(merged)]
    tasks = _task_list(a.eval_dir, [t for t in a.tasks.split(",") if t] or None, a.catalog)
    if a.merge_t is not None:  # score the merge only; a run without --merge-t compares it from the cache
        score_all(a.models[1], tasks, a.cache)
        return
    scores = {m: score_all(m, tasks, a.cache) for m in a.models}
    base = scores[a.models[0]]
    report: dict = {}
    print(f"\npaired difference against {a.models[0]} (x100; 95% bootstrap interval over test examples, "
          f"{a.boot} resamples)")
    for m in a.models[1:]:
        print(f"\n{m}")
        for task, r in scores[m].items():
            d, lo, hi = paired_ci(base[task]["per_example"], r["per_example"], a.boot)
            n = len(r["per_example"])
            extra = (f"; probe C {base[task]['C']:g} -> {r['C']:g}, macro-F1 {base[task]['f1']:.1f} -> {r['f1']:.1f}"
                     if "C" in r else "")
            print(f"  {task:<30} n={n:<5} {d:+6.1f} [{lo:+.1f}, {hi:+.1f}]{extra}")
            report.setdefault(m, {})[task] = {"diff": d, "ci95": [lo, hi], "n": n,
                                              **{k: v for k, v in r.items() if k != "per_example"}}
    print("\ntest accuracy at each probe C (x100; * = the C that 5-fold CV picked)")
    for task in base:
        if "per_c" not in base[task]:
            continue
        print(f"  {task}")
        for m in a.models:
            r = scores[m][task]
            cells = " ".join(f"{float(c):g}:{v:.1f}{'*' if float(c) == r['C'] else ''}"
                             for c, v in r["per_c"].items())
            print(f"    {Path(m).name:<24} {cells}")
    if a.json:
        base_info = {t: {k: v for k, v in r.items() if k != "per_example"} for t, r in base.items()}
        a.json.write_text(json.dumps({"base": a.models[0], "base_scores": base_info, "against_base": report},
                                     indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
