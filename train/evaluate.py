"""`compass eval`: retrieval (BEIR layout) and classification tasks, plus the catalog's held-out split.

- Retrieval task folder: corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text}), qrels/test.tsv
  (query-id, corpus-id, score; header line). Scored with sentence-transformers' InformationRetrievalEvaluator
  (exact cosine search; queries through ``encode_query``, documents through ``encode_document``): nDCG@10 (main),
  MRR@10, Recall@100.
- Classification task folder: train.jsonl / test.jsonl ({text, label}). The eval-dev probe: embed (``encode_query``),
  standardise on train, LogisticRegressionCV over C in PROBE_CS with 5-fold CV on train; accuracy (main) and
  macro-F1 on test.
- The catalog's split (default test) as retrieval tasks per language and query task, each query ranked against
  every kept product title of its language (compass.train.eval_catalog).
- Macros: retrieval and classification apart, and over all tasks; overall, per language and over SEA languages.

A task's language comes from its task.json ("language"), else from a name prefix like ``th_``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.jsonl import iter_jsonl
from compass.langs import LANGS

SEA = tuple(code for code in LANGS if code != "en")


@dataclass
class Task:
    name: str
    kind: str  # retrieval | classification
    lang: str
    path: Path | None = None


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    return [row for _, row in iter_jsonl(path, required)]


def _task_lang(folder: Path) -> str:
    meta = folder / "task.json"
    if meta.exists():
        lang = json.loads(meta.read_text(encoding="utf-8")).get("language")
        if lang:
            return str(lang)
    prefix = folder.name.split("_", 1)[0]
    return prefix if prefix in LANGS else "und"


def discover_tasks(tasks_dir: str | Path) -> list[Task]:
    """Task folders under tasks_dir (or tasks_dir itself when it is one)."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise CompassError(f"--tasks {root}: not a folder of evaluation tasks")
    tasks = []
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        if (d / "corpus.jsonl").exists():
            for f in ("queries.jsonl", "qrels/test.tsv"):
                if not (d / f).exists():
                    raise CompassError(f"{d}: retrieval task without {f} (BEIR layout: corpus.jsonl, queries.jsonl, "
                                       "qrels/test.tsv)")
            tasks.append(Task(d.name, "retrieval", _task_lang(d), d))
        elif (d / "train.jsonl").exists() and (d / "test.jsonl").exists():
            tasks.append(Task(d.name, "classification", _task_lang(d), d))
    if not tasks:
        raise CompassError(f"--tasks {root}: no task folders (retrieval: corpus.jsonl + queries.jsonl + "
                           "qrels/test.tsv; classification: train.jsonl + test.jsonl)")
    return tasks


def read_beir(folder: Path) -> tuple[dict, dict, dict]:
    corpus = {}
    for r in _read_jsonl(folder / "corpus.jsonl", ("_id", "text")):
        title = (r.get("title") or "").strip()
        corpus[str(r["_id"])] = f"{title} {r['text']}".strip() if title else r["text"]
    queries = {str(r["_id"]): r["text"] for r in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    qrels: dict[str, set[str]] = defaultdict(set)
    path = folder / "qrels" / "test.tsv"
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split("\t")
        if n == 1 and parts[0] == "query-id" or not line.strip():
            continue
        if len(parts) < 3:
            raise CompassError(f"{path}:{n}: expected query-id<TAB>corpus-id<TAB>score")
        if float(parts[2]) > 0:
            qrels[parts[0]].add(parts[1])
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise CompassError(f"{path}: query id {unknown[0]!r} is not in queries.jsonl")
    queries = {q: t for q, t in queries.items() if q in qrels}  # BEIR: only judged queries count
    return queries, corpus, dict(qrels)


def score_retrieval(model, queries: dict, corpus: dict, qrels: dict, name: str, batch_size: int = 64,
                    corpus_embeddings=None) -> dict:
    """Exact cosine search. sentence-transformers' evaluator encodes queries with ``encode_query`` and the corpus
    with ``encode_document``, so a model's query/document prompts (e5: ``query: `` / ``passage: ``) apply; a model
    without prompts encodes both sides as ``encode`` does. ``corpus_embeddings`` (len(corpus), dim), in the corpus
    dict's order, skips encoding a corpus several tasks share."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    ev = InformationRetrievalEvaluator(
        queries, corpus, qrels, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[100],
        map_at_k=[100], batch_size=batch_size, name=name, write_csv=False,
        score_functions={"cosine": cos_sim}, main_score_function="cosine")
    m = ev(model) if corpus_embeddings is None else ev(model, corpus_embeddings=corpus_embeddings)
    pre = f"{name}_cosine_"
    out = {"ndcg@10": m[pre + "ndcg@10"], "mrr@10": m[pre + "mrr@10"], "recall@100": m[pre + "recall@100"]}
    return {**out, "main": out["ndcg@10"], "queries": len(queries), "docs": len(corpus)}


# The probe of the eval-dev README (as SentEval does): C chosen by 5-fold CV on the training half.
PROBE_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
PROBE_FOLDS = 5


def fit_probe(x_train, y_train: list[str], seed: int = 42):
    """Standardise on the training half, then LogisticRegressionCV over PROBE_CS with stratified 5-fold CV.

    A fixed C=1 on raw embeddings under-fits normalised, anisotropic embeddings (E5: 37.1 instead of 64.8 accuracy
    on id_prdect_title_category), so a model would "win" by its geometry. The folds are 5 as in the eval-dev README
    (scikit-learn stratifies them and accepts classes rarer than 5, as the README's reference figures did); only when
    every class has fewer members than 5 do they shrink to the largest class, and below 2 there is nothing to
    cross-validate and C=1 is used. Returns (fitted pipeline, chosen C, folds used; 0 = no CV).
    """
    import warnings
    from collections import Counter

    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(PROBE_FOLDS, max(Counter(y_train).values()))
    if folds >= 2:
        # l1_ratios=(0,) is the L2 penalty (sklearn >= 1.8 spelling); scoring pinned: its default changes in 1.11
        clf = LogisticRegressionCV(Cs=list(PROBE_CS), cv=folds, max_iter=1000, l1_ratios=(0.0,), scoring="accuracy",
                                   use_legacy_attributes=False, random_state=seed)
    else:
        folds, clf = 0, LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")  # rare classes: expected, see above
        pipe = make_pipeline(StandardScaler(), clf).fit(x_train, y_train)
    return pipe, float(clf.C_ if folds else clf.C), folds


def score_classification(model, train: list[dict], test: list[dict], batch_size: int = 64, seed: int = 42) -> dict:
    """Linear probe on frozen embeddings: accuracy (main) and macro-F1 on test.

    Texts are encoded with ``encode_query``: a classified text is not a passage to be found but a text whose
    meaning is the feature, and e5's authors use the ``query: `` prefix for linear probing and classification (so
    does MTEB for e5). A model without a query prompt encodes exactly as ``encode`` does.
    """
    from sklearn.metrics import accuracy_score, f1_score

    x_train = model.encode_query([r["text"] for r in train], batch_size=batch_size, convert_to_numpy=True)
    x_test = model.encode_query([r["text"] for r in test], batch_size=batch_size, convert_to_numpy=True)
    y_train, y_test = [str(r["label"]) for r in train], [str(r["label"]) for r in test]
    probe, c, folds = fit_probe(x_train.astype("float32"), y_train, seed)
    pred = probe.predict(x_test.astype("float32"))
    acc = float(accuracy_score(y_test, pred))
    return {"accuracy": acc, "f1": float(f1_score(y_test, pred, average="macro")), "main": acc,
            "train": len(train), "test": len(test), "probe_c": c, "probe_folds": folds}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def load_model(model_or_path: Any, device: str | None = None, precision: str | None = None):
    """A SentenceTransformer on the resolved device (auto | cpu | cuda | cuda:N) in the resolved precision (auto |
    fp32 | bf16 | fp16; auto = bf16 on CUDA, fp32 on CPU).

    A folder or model name goes through compass.models.resolve_model (minilm, e5-small, paths); None means auto.
    An in-memory model is used as it is unless a device or precision is given; then a moved/cast COPY is scored,
    so that the caller's model (a trainer's fp32 weights, a merge's working copy) is never changed.
    """
    import copy

    import torch
    from sentence_transformers import SentenceTransformer

    from compass.devices import resolve_device, resolve_precision
    from compass.models import resolve_model

    if isinstance(model_or_path, SentenceTransformer):
        if device is None and precision is None:
            return model_or_path
        dev = resolve_device(device or str(model_or_path.device))
        dtype = resolve_precision(dev, precision)
        same = (torch.device(dev) == model_or_path.device
                and all(p.dtype == dtype for p in model_or_path.parameters() if p.is_floating_point()))
        return model_or_path if same else copy.deepcopy(model_or_path).to(device=dev, dtype=dtype)
    dev = resolve_device(device or "auto")
    dtype = resolve_precision(dev, precision or "auto")
    model = SentenceTransformer(resolve_model(model_or_path), device=dev)
    return model.to(dtype) if dtype != torch.float32 else model


def summarise(results: dict[str, dict]) -> dict:
    """Macros of per-task main scores: retrieval (nDCG@10) and classification (accuracy) apart, and over all tasks,
    overall and per language. A macro over no task is None."""
    def macros(rs: list[dict]) -> dict:
        return {"retrieval": _mean([r["main"] for r in rs if r["type"] == "retrieval"]),
                "classification": _mean([r["main"] for r in rs if r["type"] == "classification"]),
                "macro": _mean([r["main"] for r in rs])}

    rs = list(results.values())
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in rs:
        by_lang[r["lang"]].append(r)
    overall = macros(rs)
    return {
        "macro": overall["macro"],
        "retrieval_macro": overall["retrieval"],
        "classification_macro": overall["classification"],
        "languages": {lang: macros(v) for lang, v in sorted(by_lang.items())},
        "sea_macro": _mean([r["main"] for r in rs if r["lang"] in SEA]),
        "sea": macros([r for r in rs if r["lang"] in SEA]),
        "source_macro": {s: _mean([r["main"] for r in rs if r["source"] == s]) for s in ("tasks", "catalog")},
    }


def evaluate_model(model_or_path: Any, tasks_dir: str | Path | None = None, catalog: Any = None,
                   split: str | None = "test", batch_size: int = 64, langs: list[str] | None = None,
                   device: str | None = None, precision: str | None = None) -> dict:
    """Score a model on a task folder and/or a catalog split.

    Returns {"model", "device", "precision", "tasks": {name: {type, lang, source, main, ...metrics}},
    "macro" (mean main score over all tasks), "retrieval_macro" / "classification_macro" (over the tasks of one
    type), "languages": {lang: {"retrieval", "classification", "macro"}}, "sea" (the same three over SEA-language
    tasks), "sea_macro", "source_macro": {"tasks", "catalog"}}. ``catalog`` is a Catalog or a path; ``split=None``
    skips it. ``device``: auto | cpu | cuda | cuda:N; ``precision``: auto | fp32 | bf16 | fp16 (auto: bf16 on
    CUDA, fp32 on CPU); None = auto for a folder, as it is for an in-memory model (see load_model).
    """
    from sentence_transformers import SentenceTransformer

    from compass.devices import precision_name
    from compass.train.eval_catalog import catalog_retrieval_tasks

    if tasks_dir is None and (catalog is None or split is None):
        raise CompassError("nothing to evaluate: pass --tasks DIR and/or a catalog with --catalog-split")
    model = load_model(model_or_path, device, precision)
    results: dict[str, dict] = {}
    if tasks_dir is not None:
        for t in discover_tasks(tasks_dir):
            if langs and t.lang not in langs:
                continue
            if t.kind == "retrieval":
                q, c, r = read_beir(t.path)
                res = score_retrieval(model, q, c, r, t.name, batch_size)
            else:
                train = _read_jsonl(t.path / "train.jsonl", ("text", "label"))
                test = _read_jsonl(t.path / "test.jsonl", ("text", "label"))
                res = score_classification(model, train, test, batch_size)
            results[t.name] = {"type": t.kind, "lang": t.lang, "source": "tasks", **res}
    if catalog is not None and split:
        from compass.catalog.db import Catalog

        own = not isinstance(catalog, Catalog)
        cat = Catalog(catalog, read_only=True) if own else catalog
        try:
            tasks = catalog_retrieval_tasks(cat, split, langs)
        finally:
            if own:
                cat.close()
        encoded: dict[int, Any] = {}  # id(corpus) -> embeddings: a language's title tasks share one corpus
        for name, lang, (q, c, r) in tasks:
            if id(c) not in encoded:
                encoded[id(c)] = model.encode_document(list(c.values()), batch_size=batch_size, convert_to_tensor=True)
            results[name] = {"type": "retrieval", "lang": lang, "source": "catalog",
                             **score_retrieval(model, q, c, r, name, batch_size, encoded[id(c)])}
    return {
        "model": str(model_or_path) if not isinstance(model_or_path, SentenceTransformer) else "(in memory)",
        "device": str(model.device), "precision": precision_name(next(model.parameters()).dtype),
        "tasks": results, **summarise(results),
    }


def _pct(v):
    return None if v is None else round(100 * v, 2)


def result_tables(res: dict) -> tuple[list[dict], list[dict]]:
    """(per-task rows, per-language rows) for printing and for model cards; scores x100.

    Per-language rows: retrieval macro (nDCG@10), classification macro (accuracy), and the macro over all the
    language's tasks; then ALL and SEA rows.
    """
    tasks = [{"task": n, "type": r["type"], "lang": r["lang"], "main": _pct(r["main"]),
              "ndcg@10": _pct(r.get("ndcg@10")), "mrr@10": _pct(r.get("mrr@10")),
              "recall@100": _pct(r.get("recall@100")), "accuracy": _pct(r.get("accuracy")),
              "macro_f1": _pct(r.get("f1"))}
             for n, r in res["tasks"].items()]

    def row(lang: str, m: dict) -> dict:
        return {"lang": lang, "retrieval": _pct(m.get("retrieval")), "classification": _pct(m.get("classification")),
                "macro": _pct(m.get("macro"))}

    langs = [row(lang, m) for lang, m in res["languages"].items()]
    langs.append(row("ALL", {"retrieval": res.get("retrieval_macro"),
                             "classification": res.get("classification_macro"), "macro": res["macro"]}))
    langs.append(row("SEA", res.get("sea") or {"macro": res.get("sea_macro")}))
    return tasks, langs
