"""compass eval on tiny BEIR / classification fixtures written here, and the catalog split as retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PRODUCTS_TH, run_cli, write_jsonl

from compass.errors import CompassError
from compass.train.evaluate import discover_tasks, evaluate_model, read_beir

DOCS = ["sepatu lari pria hitam", "tas kulit wanita coklat", "krim tabir surya spf50", "casing ponsel silikon",
        "kemeja batik lengan panjang", "jam tangan digital sport"]
CLS_WORDS = {"shoe": ["sepatu", "sandal", "sneaker"], "bag": ["tas", "dompet", "ransel"]}


def tiny_model(tmp_path: Path, texts: list[str]):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    from compass.train.static_base import train_tokenizer

    torch.manual_seed(0)
    model = SentenceTransformer(modules=[StaticEmbedding(train_tokenizer(texts, 300), embedding_dim=64)],
                                device="cpu")
    model.save(str(tmp_path / "tiny"))
    return tmp_path / "tiny"


def write_tasks(root: Path) -> Path:
    ret = root / "id_toy_retrieval"
    (ret / "qrels").mkdir(parents=True)
    write_jsonl(ret / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)])
    # each query is its document verbatim: any model ranks the identical text first (cosine 1)
    write_jsonl(ret / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(DOCS)] +
                [{"_id": "unjudged", "text": "tidak dinilai"}])
    (ret / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                            "".join(f"q{i}\td{i}\t1\n" for i in range(len(DOCS))))
    cls = root / "th_toy_classification"
    cls.mkdir()
    rows = [{"text": f"{w} {w} model {i}", "label": lab} for lab, ws in CLS_WORDS.items() for w in ws for i in range(4)]
    write_jsonl(cls / "train.jsonl", rows)
    write_jsonl(cls / "test.jsonl", rows[::3])
    (cls / "task.json").write_text(json.dumps({"language": "th"}))
    return root


def test_eval_tasks_scores_and_language_macros(tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    model = tiny_model(tmp_path, DOCS + [w for ws in CLS_WORDS.values() for w in ws] * 3)
    res = evaluate_model(model, tasks)
    r = res["tasks"]["id_toy_retrieval"]
    assert r["type"] == "retrieval" and r["lang"] == "id" and r["queries"] == len(DOCS)  # unjudged query dropped
    assert r["ndcg@10"] == pytest.approx(1.0) and r["mrr@10"] == pytest.approx(1.0) and r["recall@100"] == 1.0
    c = res["tasks"]["th_toy_classification"]
    assert c["type"] == "classification" and c["lang"] == "th" and c["accuracy"] == pytest.approx(1.0)
    assert c["f1"] == pytest.approx(1.0)
    assert res["languages"]["id"] == {"retrieval": pytest.approx(1.0), "classification": None,
                                      "macro": pytest.approx(1.0)}
    assert res["languages"]["th"] == {"retrieval": None, "classification": pytest.approx(1.0),
                                      "macro": pytest.approx(1.0)}
    assert res["macro"] == pytest.approx(1.0) and res["sea_macro"] == pytest.approx(1.0)
    assert res["retrieval_macro"] == pytest.approx(1.0) and res["classification_macro"] == pytest.approx(1.0)
    assert res["device"] == "cpu" and res["precision"] == "fp32"


def test_macros_keep_retrieval_and_classification_apart():
    from compass.train.evaluate import result_tables, summarise

    results = {"a": {"type": "retrieval", "lang": "th", "source": "tasks", "main": 0.2},
               "b": {"type": "classification", "lang": "th", "source": "tasks", "main": 0.8},
               "c": {"type": "classification", "lang": "th", "source": "tasks", "main": 0.6},
               "d": {"type": "retrieval", "lang": "en", "source": "catalog", "main": 0.4}}
    s = summarise(results)
    assert s["retrieval_macro"] == pytest.approx(0.3) and s["classification_macro"] == pytest.approx(0.7)
    assert s["macro"] == pytest.approx(0.5)  # over tasks, not over the two type macros
    assert s["languages"]["th"] == {"retrieval": pytest.approx(0.2), "classification": pytest.approx(0.7),
                                    "macro": pytest.approx(1.6 / 3)}
    assert s["sea"] == {"retrieval": pytest.approx(0.2), "classification": pytest.approx(0.7),
                        "macro": pytest.approx(1.6 / 3)}
    _, langs = result_tables({"tasks": results, **s})
    assert [r["lang"] for r in langs] == ["en", "th", "ALL", "SEA"]
    assert langs[1] == {"lang": "th", "retrieval": 20.0, "classification": 70.0, "macro": 53.33}
    assert langs[0]["classification"] is None


def test_eval_retrieval_is_not_trivially_perfect(tmp_path):
    """Queries that share no token with their documents: the random tiny model cannot be perfect."""
    root = tmp_path / "tasks"
    write_tasks(root)
    (root / "id_toy_retrieval" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{(i + 1) % len(DOCS)}\t1\n" for i in range(len(DOCS))))
    model = tiny_model(tmp_path, DOCS)
    res = evaluate_model(model, root / "id_toy_retrieval")
    assert res["tasks"]["id_toy_retrieval"]["mrr@10"] < 0.6


def _with_prompts(path: Path, prompts: dict) -> Path:
    cfg = path / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text()) if cfg.exists() else {}
    cfg.write_text(json.dumps({**data, "prompts": prompts, "default_prompt_name": None}))
    return path


def test_retrieval_encodes_queries_and_documents_with_their_prompts(tmp_path):
    """A model's query/document prompts apply in retrieval: the evaluator's MRR equals one computed by hand from
    prompt + text, and differs from the same model without prompts (which finds every verbatim query)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    root = write_tasks(tmp_path / "tasks")
    path = tiny_model(tmp_path, DOCS + ["tas tas tas"])
    plain = evaluate_model(path, root / "id_toy_retrieval")["tasks"]["id_toy_retrieval"]
    assert plain["mrr@10"] == pytest.approx(1.0)
    prompts = {"query": "tas " * 30, "document": "sepatu "}
    res = evaluate_model(_with_prompts(path, prompts), root / "id_toy_retrieval")["tasks"]["id_toy_retrieval"]
    model = SentenceTransformer(str(path), device="cpu")
    assert model.prompts == prompts
    q = model.encode([prompts["query"] + t for t in DOCS], normalize_embeddings=True)
    d = model.encode([prompts["document"] + t for t in DOCS], normalize_embeddings=True)
    ranks = [int((row > row[i]).sum()) + 1 for i, row in enumerate(q @ d.T)]  # rank of the right document
    mrr = float(np.mean([1 / r if r <= 10 else 0.0 for r in ranks]))
    assert res["mrr@10"] == pytest.approx(mrr, abs=1e-6) and mrr < 0.99


def test_classification_uses_the_query_prompt(tmp_path):
    from sentence_transformers import SentenceTransformer

    from compass.train.evaluate import fit_probe, score_classification

    root = write_tasks(tmp_path / "tasks")
    path = _with_prompts(tiny_model(tmp_path, DOCS + ["tas sepatu model"]), {"query": "tas sepatu ",
                                                                            "document": "model "})
    model = SentenceTransformer(str(path), device="cpu")
    train = [json.loads(x) for x in (root / "th_toy_classification" / "train.jsonl").read_text().splitlines()]
    test = [{"text": f"{w} baru", "label": lab} for lab, ws in CLS_WORDS.items() for w in ws]
    res = score_classification(model, train, test)
    probe, c, folds = fit_probe(model.encode(["tas sepatu " + r["text"] for r in train]), [r["label"] for r in train])
    pred = probe.predict(model.encode(["tas sepatu " + r["text"] for r in test]))
    assert res["accuracy"] == pytest.approx(sum(p == r["label"] for p, r in zip(pred, test)) / len(test))
    assert res["probe_c"] == c and res["probe_folds"] == folds == 5


def test_probe_standardises_and_picks_c_by_cross_validation():
    """Normalised, anisotropic features (a large shared offset, the signal tiny): plain C=1 logistic regression on
    raw features under-fits; the probe standardises on train and chooses C by CV, and separates the classes."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from compass.train.evaluate import PROBE_CS, fit_probe

    rng = np.random.default_rng(0)
    y = np.array(["a", "b"] * 100)
    x = rng.normal(0, 0.05, (200, 30))  # 28 dimensions of noise
    x[:, 0] = 1.0  # the offset every embedding shares
    x[:, 1] = np.where(y == "a", 1e-3, -1e-3) + rng.normal(0, 3e-4, 200)  # the signal, tiny next to the noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    raw = LogisticRegression(C=1.0, max_iter=1000).fit(x[:100], y[:100]).score(x[100:], y[100:])
    probe, c, folds = fit_probe(x[:100], list(y[:100]))
    assert raw < 0.65 and probe.score(x[100:], y[100:]) > 0.9
    assert c in PROBE_CS and folds == 5
    # rare classes keep 5 folds (as scikit-learn and the eval-dev reference figures do); only when every class is
    # smaller do the folds shrink; with one example per class there is nothing to cross-validate: C=1
    assert fit_probe(x[:21], ["a"] * 20 + ["b"])[2] == 5
    assert fit_probe(x[:6], ["a"] * 3 + ["b"] * 3)[2] == 3
    assert fit_probe(x[:2], ["a", "b"])[1:] == (1.0, 0)


def test_eval_device_and_precision(tmp_path):
    root = write_tasks(tmp_path / "tasks")
    path = tiny_model(tmp_path, DOCS)
    res = evaluate_model(path, root / "id_toy_retrieval", device="cpu", precision="bf16")
    assert res["precision"] == "bf16" and res["device"] == "cpu"
    assert res["tasks"]["id_toy_retrieval"]["mrr@10"] == pytest.approx(1.0)
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")  # in memory: scored as it is, or as a cast copy
    assert evaluate_model(model, root / "id_toy_retrieval")["precision"] == "fp32"
    assert evaluate_model(model, root / "id_toy_retrieval", precision="bf16")["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched

    if not torch.cuda.is_available():
        with pytest.raises(CompassError, match="--device cuda"):
            evaluate_model(path, root, device="cuda")


def test_eval_errors_name_the_file_and_line(tmp_path):
    root = write_tasks(tmp_path / "tasks")
    (root / "id_toy_retrieval" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0 d0 1\n")
    with pytest.raises(CompassError, match=r"test.tsv:2: expected query-id<TAB>corpus-id<TAB>score"):
        read_beir(root / "id_toy_retrieval")
    (root / "th_toy_classification" / "test.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(CompassError, match=r"test.jsonl:1: missing key 'label'"):
        evaluate_model(tiny_model(tmp_path, DOCS), root / "th_toy_classification")
    with pytest.raises(CompassError, match="no task folders"):
        discover_tasks(tmp_path)


@pytest.mark.slow
def test_eval_cli_with_catalog_split(tmp_path, catalog, products_file):
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    run_cli("generate", "--route", "structured", catalog=catalog)
    run_cli("split", "--test", "0.6", "--dev", "0.0", "--seed", "2", catalog=catalog)
    tasks = write_tasks(tmp_path / "tasks")
    model = tiny_model(tmp_path, DOCS)
    out = tmp_path / "res.json"
    run_cli("eval", str(model), "--tasks", str(tasks), "--json", str(out), catalog=catalog)
    res = json.loads(out.read_text())
    cat_tasks = [n for n, r in res["tasks"].items() if r["source"] == "catalog"]
    # the held-out product (Biore: no model, so no item query) gets eval-only category queries
    assert {"catalog_test_th_category", "catalog_test_th_category_query2title"} <= set(cat_tasks)
    t = res["tasks"]["catalog_test_th_category_query2title"]
    n_products = len({p["title"] for p in PRODUCTS_TH})
    assert t["queries"] >= 1 and 0 <= t["ndcg@10"] <= 1 and t["docs"] == n_products  # the whole shop, not the split
    assert res["source_macro"]["tasks"] is not None and res["source_macro"]["catalog"] is not None
    assert res["retrieval_macro"] is not None and res["classification_macro"] is not None
    bad = run_cli("eval", str(model), "--tasks", str(tasks), "--device", "tpu", catalog=catalog, check=False)
    assert bad.returncode != 0 and "--device 'tpu'" in bad.stdout + bad.stderr
