"""The catalog eval (compass.train.eval_catalog) on small real DuckDB catalogs: eval-only shopper queries for the
held-out products, strict item relevance, category relevance, every label of the language, and older catalogs."""

from __future__ import annotations

import json

import pytest

from compass.catalog.db import Catalog
from compass.datagen.shopper import Shopper
from compass.ids import text_hash as h
from compass.train.eval_catalog import (
    WORDLESS,
    catalog_retrieval_tasks,
    changes_words,
    eval_queries,
    has_values,
    query_attributes,
)

PHONES, CASES = "Điện thoại & Phụ kiện > Điện thoại", "Điện thoại & Phụ kiện > Ốp lưng"
# id, title, category, attributes, split of its examples
PRODUCTS = [
    ("p1", "Điện thoại Samsung Galaxy A55 5G 8GB 256GB chính hãng", PHONES,
     {"brand": "Samsung", "model": "Galaxy A55", "storage": "256GB", "colour": "xanh"}, "test"),
    ("p2", "Samsung Galaxy A55 256GB màu xanh - hàng chính hãng", PHONES,   # a second seller's listing of p1's item
     {"brand": "Samsung", "model": "Galaxy A55", "storage": "256GB"}, "train"),
    ("p3", "Điện thoại Samsung Galaxy A15 128GB", PHONES,                   # same brand and category, other item
     {"brand": "Samsung", "model": "Galaxy A15", "storage": "128GB"}, "train"),
    ("p4", "Điện thoại Xiaomi Redmi Note 13 128GB", PHONES,                 # same category, other brand
     {"brand": "Xiaomi", "model": "Redmi Note 13", "storage": "128GB"}, "train"),
    ("p5", "Ốp lưng Samsung Galaxy A55 silicon trong suốt", CASES, {"brand": "Samsung"}, "train"),
]
TITLE = {p[0]: p[1] for p in PRODUCTS}
ITEM = "item:vi:samsung|galaxy a55"


def _product_rows() -> list[dict]:
    return [{"id": pid, "lang": "vi", "title": t, "category": c, "attributes": json.dumps(a, ensure_ascii=False)}
            for pid, t, c, a, _ in PRODUCTS]


def _fill(con, structured_p1: bool = True, grounded: bool = True, title_for_p1_query: str | None = None) -> None:
    """Products, one title2category example each (split by product), and p1's stored test queries."""
    for pid, t, c, a, _ in PRODUCTS:
        con.execute("INSERT INTO products (id, lang, market, title, category, attributes) "
                    "VALUES (?, 'vi', 'VN', ?, ?, ?)", [pid, t, c, json.dumps(a, ensure_ascii=False)])
    split = {p[0]: p[4] for p in PRODUCTS}
    ex = [(f"t{pid}", "structured", "title2category", t, c, f"category:vi:{c}", pid)
          for pid, t, c, _, _ in PRODUCTS]
    if structured_p1:  # the old eval's stored queries: a plain fragment, a brand+values query, a description
        ex += [("q1", "structured", "query2title", "samsung galaxy a55", TITLE["p1"], ITEM, "p1"),
               ("a1", "structured", "attr_query2title", "Samsung 256GB", TITLE["p1"], ITEM, "p1"),
               ("d1", "structured", "desc2title", "Điện thoại Samsung Galaxy A55 màn hình 6.6 inch", TITLE["p1"],
                ITEM, "p1")]
    if grounded:  # an LLM-written query (another route): kept as stored
        ex += [("g1", "grounded", "query2title", "điện thoại samsung tầm trung chụp đẹp", TITLE["p1"], ITEM, "p1")]
    for eid, route, task, a, pos, cls, pid in ex:
        con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, product_id) "
                    "VALUES (?, ?, 'vi', ?, ?, ?, ?, ?)", [eid, route, task, a, pos, cls, pid])
        con.execute("INSERT INTO splits (example_id, split, group_id) VALUES (?, ?, ?)", [eid, split[pid], pid])


def test_eval_queries_are_deterministic_and_change_words():
    sh, p1 = Shopper("vi"), _product_rows()[0]
    for kind in ("item", "category"):
        qs = eval_queries(p1, kind, sh)
        assert len(qs) == 4 and [q.text for q in qs] == [q.text for q in eval_queries(p1, kind, Shopper("vi"))]
        assert len({q.text for q in qs}) == 4 and all(q.text.lower() != p1["title"].lower() for q in qs)
        assert all(changes_words(q.steps) for q in qs)
    assert not changes_words([{"family": f} for f in WORDLESS]) and changes_words([{"family": "strip_marks"}])
    # an item query needs brand or model: without them it would be a title fragment, which the eval leaves out
    assert eval_queries({**p1, "attributes": "{}"}, "item", sh) == []


def test_item_relevance_is_strict_and_category_relevance_is_the_category(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat, cat.transaction() as con:
        _fill(con)
        # p6: its only example rejected, so it is not in the shop; x3: an example of p3's superseded old version
        # with p1's item class, which no longer makes p3 a member of that item
        con.execute("INSERT INTO products (id, lang, market, title, category) VALUES ('p6', 'vi', 'VN', 'rác', ?)",
                    [PHONES])
        for eid, pid, cls, stage in (("x6", "p6", "product:p6", "quality"), ("x3", "p3", ITEM, "product")):
            con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, product_id) "
                        "VALUES (?, 'grounded', 'vi', 'query2title', ?, ?, ?, ?)",
                        [eid, f"q {eid}", TITLE.get(pid, "rác"), cls, pid])
            con.execute("INSERT INTO splits (example_id, split, group_id) VALUES (?, 'train', ?)", [eid, pid])
            con.execute("INSERT INTO decisions (example_id, stage, keep, reason) VALUES (?, ?, FALSE, 'x')",
                        [eid, stage])
    with Catalog(tmp_path / "c.duckdb", read_only=True) as cat:
        tasks = {name: data for name, _, data in catalog_retrieval_tasks(cat, "test")}
        again = {name: data for name, _, data in catalog_retrieval_tasks(cat, "test")}
    assert tasks == again  # deterministic
    # attr_query2title and desc2title are not evaluated; stored structured queries are replaced by eval-only ones
    assert sorted(tasks) == ["catalog_test_vi_category", "catalog_test_vi_category_query2title",
                             "catalog_test_vi_query2title"]
    queries, corpus, qrels = tasks["catalog_test_vi_query2title"]
    assert corpus == {h(t): t for t in TITLE.values()}  # the whole shop: train-split products and other categories
    assert "samsung galaxy a55" not in queries.values()  # the plain fragment no longer counts
    assert "điện thoại samsung tầm trung chụp đẹp" in queries.values()  # another route's query stays
    assert len(queries) == 5  # 4 eval-only item queries of p1 + the grounded one
    # strict: p1 and the second listing p2; not p3 (same brand), p4 (same category) nor p5 (same brand, a case)
    assert all(r == {h(TITLE["p1"]), h(TITLE["p2"])} for r in qrels.values())
    queries, corpus, qrels = tasks["catalog_test_vi_category_query2title"]
    assert len(queries) == 4
    # the phones that have every value the query names (p2 states no colour: its title says "màu xanh")
    sh, p1 = Shopper("vi"), _product_rows()[0]
    named = {h(q.text): {v for _, v in query_attributes(json.loads(p1["attributes"]), q.parts, sh.rules)}
             for q in eval_queries(p1, "category", sh)}
    assert set(named) == set(qrels) and sum(1 for v in named.values() if v) >= 2  # values are named, and matched
    want = {frozenset(): {"p1", "p2", "p3", "p4"}, frozenset({"256GB"}): {"p1", "p2"},
            frozenset({"xanh"}): {"p1", "p2"}, frozenset({"256GB", "xanh"}): {"p1", "p2"}}
    for qid, values in named.items():
        assert qrels[qid] == {h(TITLE[p]) for p in want[frozenset(values)]}, (queries[qid], values)
    queries, corpus, qrels = tasks["catalog_test_vi_category"]
    # every label of the language (the cases' category has no test title), not only the split's
    assert corpus == {h(PHONES): PHONES, h(CASES): CASES}
    assert qrels == {h(TITLE["p1"]): {h(PHONES)}}
    # evaluate_model encodes a language's shared corpus once: the same scores as each task scored alone
    from sentence_transformers import SentenceTransformer
    from test_eval import tiny_model

    from compass.train.evaluate import evaluate_model, score_retrieval

    texts = [*TITLE.values(), PHONES, CASES, *(q for qs, _, _ in tasks.values() for q in qs.values())]
    path = tiny_model(tmp_path, texts)
    res = evaluate_model(path, None, tmp_path / "c.duckdb", "test")
    model = SentenceTransformer(str(path), device="cpu")
    for name, (q, c, r) in tasks.items():
        alone = score_retrieval(model, q, c, r, name)
        assert res["tasks"][name]["ndcg@10"] == pytest.approx(alone["ndcg@10"]) and res["tasks"][name]["docs"] == len(c)


def test_attribute_values_are_matched_strictly():
    assert has_values({"storage": "256 gb"}, "x", [("storage", "256GB ")]) is False  # a stated value must equal
    assert has_values({"storage": "256gb"}, "x", [("storage", "256GB")])
    assert has_values({"storage": "128GB"}, "Samsung 256GB", [("storage", "256GB")]) is False  # stated wins
    assert has_values({}, "Samsung A55 màu xanh", [("colour", "xanh")])  # not stated: the title's words
    assert not has_values({}, "Samsung A55 màu xanhlá", [("colour", "xanh")])  # a word edge, not a substring
    assert has_values({}, "เสื้อยืดสีดำ", [("colour", "สีดำ")], spaces=False)  # no spaces in Thai
    assert has_values({"a": "1"}, "", [])  # a query naming no value: the whole category


def test_older_catalog_evaluates_with_eval_only_queries(tmp_path):
    """A catalog written before shopper queries (no example_transforms; fragment query2title) is upgraded on open and
    gets the same eval-only queries for its held-out products; its stored structured queries do not count."""
    from test_eval import tiny_model

    from compass.train.evaluate import evaluate_model

    with Catalog(tmp_path / "old.duckdb", create=True, upto="0050_product_versions.sql") as old:
        assert "example_transforms" not in {t for t, _, _ in old.schema()}
        with old.transaction() as con:
            _fill(con, grounded=False)
    with Catalog(tmp_path / "new.duckdb", create=True) as new, new.transaction() as con:
        _fill(con, grounded=False)
    with Catalog(tmp_path / "old.duckdb", read_only=True) as cat:
        old_tasks = catalog_retrieval_tasks(cat, "test")
    with Catalog(tmp_path / "new.duckdb", read_only=True) as cat:
        assert old_tasks == catalog_retrieval_tasks(cat, "test")
    model = tiny_model(tmp_path, list(TITLE.values()) + [PHONES, CASES])
    res = evaluate_model(model, None, tmp_path / "old.duckdb", "test")
    assert set(res["tasks"]) == {"catalog_test_vi_category", "catalog_test_vi_category_query2title",
                                 "catalog_test_vi_query2title"}
    assert res["tasks"]["catalog_test_vi_query2title"]["queries"] == 4
    assert all(0 <= r["ndcg@10"] <= 1 and r["docs"] in (2, 5) for r in res["tasks"].values())


def test_languages_without_held_out_products_give_no_tasks(tmp_path):
    with Catalog(tmp_path / "c.duckdb", create=True) as cat, cat.transaction() as con:
        _fill(con)
        con.execute("UPDATE splits SET split = 'train'")
    with Catalog(tmp_path / "c.duckdb", read_only=True) as cat:
        assert catalog_retrieval_tasks(cat, "test") == []
        assert [n for n, _, _ in catalog_retrieval_tasks(cat, "train", ["vi"])] == [
            "catalog_train_vi_category", "catalog_train_vi_category_query2title", "catalog_train_vi_query2title"]
        assert catalog_retrieval_tasks(cat, "train", ["th"]) == []


@pytest.mark.parametrize("lang", ["th", "vi", "id", "km"])
def test_every_language_gets_eval_queries_from_the_bundled_rules(lang):
    p = {"id": f"{lang}-1", "lang": lang, "title": "Samsung Galaxy A55 256GB", "category": "Phones > Smartphones",
         "attributes": json.dumps({"brand": "Samsung", "model": "Galaxy A55", "storage": "256GB"})}
    qs = eval_queries(p, "item", Shopper(lang))
    assert qs and all(changes_words(q.steps) for q in qs)
