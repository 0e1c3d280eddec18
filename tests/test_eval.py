"""compass eval on tiny BEIR / classification fixtures written here, and the catalog split as retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compass.errors import CompassError
from compass.train.evaluate import discover_tasks, evaluate_model, read_beir
from conftest import run_cli, write_jsonl

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
    assert res["languages"] == {"id": pytest.approx(1.0), "th": pytest.approx(1.0)}
    assert res["macro"] == pytest.approx(1.0) and res["sea_macro"] == pytest.approx(1.0)


def test_eval_retrieval_is_not_trivially_perfect(tmp_path):
    """Queries that share no token with their documents: the random tiny model cannot be perfect."""
    root = tmp_path / "tasks"
    write_tasks(root)
    (root / "id_toy_retrieval" / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{(i + 1) % len(DOCS)}\t1\n" for i in range(len(DOCS))))
    model = tiny_model(tmp_path, DOCS)
    res = evaluate_model(model, root / "id_toy_retrieval")
    assert res["tasks"]["id_toy_retrieval"]["mrr@10"] < 0.6


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
    assert cat_tasks == ["catalog_test_th_category", "catalog_test_th_title"]
    t = res["tasks"]["catalog_test_th_title"]
    assert t["queries"] >= 1 and 0 <= t["ndcg@10"] <= 1
    assert res["source_macro"]["tasks"] is not None and res["source_macro"]["catalog"] is not None


def test_catalog_retrieval_relevance_is_the_class(tmp_path):
    """Two examples of one class: each anchor's relevant set holds both positives."""
    from compass.catalog.db import Catalog
    from compass.ids import text_hash
    from compass.train.evaluate import catalog_retrieval_tasks

    with Catalog(tmp_path / "c.duckdb", create=True) as cat, cat.transaction() as con:
        rows = [("e1", "ราคา ถูก", "รองเท้า A ร้าน 1", "item:th:a|1"), ("e2", "รองเท้า a", "รองเท้า A ร้าน 2",
                                                                            "item:th:a|1"),
                ("e3", "กระเป๋า", "กระเป๋า B", "item:th:b|2")]
        for i, a, p, c in rows:
            con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id) "
                        "VALUES (?, 'structured', 'th', 'query2title', ?, ?, ?)", [i, a, p, c])
            con.execute("INSERT INTO splits (example_id, split, group_id) VALUES (?, 'test', ?)", [i, c])
    with Catalog(tmp_path / "c.duckdb", read_only=True) as cat:
        [(task, (queries, corpus, qrels))] = catalog_retrieval_tasks(cat, "test")
    assert task.name == "catalog_test_th_title" and len(corpus) == 3 and len(queries) == 3
    assert qrels[text_hash("ราคา ถูก")] == {text_hash("รองเท้า A ร้าน 1"), text_hash("รองเท้า A ร้าน 2")}
    assert qrels[text_hash("กระเป๋า")] == {text_hash("กระเป๋า B")}
