"""`compass eval`: retrieval (BEIR layout) and classification (MTEB-style) tasks, plus the catalog's test split.

- Retrieval task folder: corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text}), qrels/test.tsv
  (query-id, corpus-id, score; header line). Scored with sentence-transformers' InformationRetrievalEvaluator
  (exact cosine search): nDCG@10 (main), MRR@10, Recall@100.
- Classification task folder: train.jsonl / test.jsonl ({text, label}). As MTEB does: embed, fit
  LogisticRegression(max_iter=1000) on train, accuracy (main) and macro-F1 on test.
- The catalog's split (default test) as retrieval tasks per language (titles and category labels searched apart,
  see catalog_retrieval_tasks): distinct anchors are the queries, distinct
  positives the corpus, and a document is relevant to a query when it is the positive of an example of the same
  class id (the class is the set of valid positives), so a second seller's listing of the item counts as a hit.

A task's language comes from its task.json ("language"), else from a name prefix like ``th_``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.errors import CompassError
from compass.models import BASELINE_ALIASES, minilm_path
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


def score_retrieval(model, queries: dict, corpus: dict, qrels: dict, name: str, batch_size: int = 64) -> dict:
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    ev = InformationRetrievalEvaluator(
        queries, corpus, qrels, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1], precision_recall_at_k=[100],
        map_at_k=[100], batch_size=batch_size, name=name, write_csv=False,
        score_functions={"cosine": cos_sim}, main_score_function="cosine")
    m = ev(model)
    pre = f"{name}_cosine_"
    out = {"ndcg@10": m[pre + "ndcg@10"], "mrr@10": m[pre + "mrr@10"], "recall@100": m[pre + "recall@100"]}
    return {**out, "main": out["ndcg@10"], "queries": len(queries), "docs": len(corpus)}


def score_classification(model, train: list[dict], test: list[dict], batch_size: int = 64, seed: int = 42) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    x_train = model.encode([r["text"] for r in train], batch_size=batch_size, convert_to_numpy=True)
    x_test = model.encode([r["text"] for r in test], batch_size=batch_size, convert_to_numpy=True)
    y_train, y_test = [str(r["label"]) for r in train], [str(r["label"]) for r in test]
    clf = LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, y_train)
    pred = clf.predict(x_test)
    acc = float(accuracy_score(y_test, pred))
    return {"accuracy": acc, "f1": float(f1_score(y_test, pred, average="macro")), "main": acc,
            "train": len(train), "test": len(test)}


def catalog_retrieval_tasks(cat, split: str = "test", langs: list[str] | None = None) -> list[tuple[Task, tuple]]:
    """(task, (queries, corpus, qrels)) per language and target kind from the catalog's kept examples of a split.

    Target kind: category labels (title2category) and product texts (every other task) are searched apart, as a
    shop searches them: a query competes among titles, a title among category labels. (One mixed corpus would
    score a model on ranking labels below titles for queries, which no task asks for and CAM's task policy
    deliberately leaves untrained.)
    """
    from compass.ids import text_hash
    from compass.train.data import load_frame

    frame = load_frame(cat, split, langs)
    out = []
    kind_of = lambda task: "category" if task == "title2category" else "title"  # noqa: E731
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in frame.to_dicts():
        groups[(r["lang"], kind_of(r["task"]))].append(r)
    for (lang, kind), rows in sorted(groups.items()):
        corpus = {text_hash(r["positive"]): r["positive"] for r in rows}
        docs_of_class: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            docs_of_class[r["class_id"]].add(text_hash(r["positive"]))
        queries, qrels = {}, defaultdict(set)
        for r in rows:
            qid = text_hash(r["anchor"])
            queries[qid] = r["anchor"]
            qrels[qid] |= docs_of_class[r["class_id"]] | {text_hash(r["positive"])}
        out.append((Task(f"catalog_{split}_{lang}_{kind}", "retrieval", lang), (queries, corpus, dict(qrels))))
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def evaluate_model(model_or_path: Any, tasks_dir: str | Path | None = None, catalog: Any = None,
                   split: str | None = "test", batch_size: int = 64, langs: list[str] | None = None) -> dict:
    """Score a model on a task folder and/or a catalog split.

    Returns {"model", "tasks": {name: {type, lang, source, main, ...metrics}}, "languages": {lang: macro},
    "macro" (mean main score over all tasks), "sea_macro" (tasks in SEA languages), "source_macro":
    {"tasks": ..., "catalog": ...}}. ``catalog`` is a Catalog or a path; ``split=None`` skips it.
    """
    from sentence_transformers import SentenceTransformer

    model = model_or_path
    if not isinstance(model, SentenceTransformer):
        path = Path(str(model_or_path))
        if str(path).lower() in BASELINE_ALIASES:
            path = minilm_path()
        if not path.exists():
            raise CompassError(f"model {path}: no such folder (pass a sentence-transformers model directory)")
        model = SentenceTransformer(str(path), device="cpu")
    if tasks_dir is None and (catalog is None or split is None):
        raise CompassError("nothing to evaluate: pass --tasks DIR and/or a catalog with --catalog-split")
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
            for t, (q, c, r) in catalog_retrieval_tasks(cat, split, langs):
                results[t.name] = {"type": "retrieval", "lang": t.lang, "source": "catalog",
                                   **score_retrieval(model, q, c, r, t.name, batch_size)}
        finally:
            if own:
                cat.close()
    by_lang: dict[str, list[float]] = defaultdict(list)
    for r in results.values():
        by_lang[r["lang"]].append(r["main"])
    return {
        "model": str(model_or_path) if not isinstance(model_or_path, SentenceTransformer) else "(in memory)",
        "tasks": results,
        "languages": {lang: _mean(v) for lang, v in sorted(by_lang.items())},
        "macro": _mean([r["main"] for r in results.values()]),
        "sea_macro": _mean([r["main"] for r in results.values() if r["lang"] in SEA]),
        "source_macro": {s: _mean([r["main"] for r in results.values() if r["source"] == s])
                         for s in ("tasks", "catalog")},
    }


def result_tables(res: dict) -> tuple[list[dict], list[dict]]:
    """(per-task rows, per-language rows) for printing and for model cards; scores x100."""
    def pct(v):
        return None if v is None else round(100 * v, 2)

    tasks = [{"task": n, "type": r["type"], "lang": r["lang"], "main": pct(r["main"]),
              "ndcg@10": pct(r.get("ndcg@10")), "mrr@10": pct(r.get("mrr@10")),
              "recall@100": pct(r.get("recall@100")), "accuracy": pct(r.get("accuracy")), "macro_f1": pct(r.get("f1"))}
             for n, r in res["tasks"].items()]
    langs = [{"lang": lang, "macro": pct(v)} for lang, v in res["languages"].items()]
    langs += [{"lang": "ALL", "macro": pct(res["macro"])}, {"lang": "SEA", "macro": pct(res["sea_macro"])}]
    return tasks, langs
