"""Splits: no product / item / translation group straddles splits; later arrivals get the same rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.ids import content_id
from compass.train.splits import SplitPolicy, assign_splits, split_sizes

CATS = ["Fashion > Shoes", "Beauty > Sunscreen", "Phones > Cases"]


def _product(i: int) -> dict:
    # every third product shares brand+model with the previous one: two sellers, one item
    model = f"M{i - 1 if i % 3 == 2 else i}"
    attrs = {"brand": "Acme", "model": model} if i % 2 == 0 or i % 3 == 2 else {"colour": "black"}
    return {"id": f"p{i}", "lang": "id", "market": "ID", "title": f"Barang {i} Acme {model}",
            "category": CATS[i % 3], "attributes": json.dumps(attrs)}


def _examples(p: dict, with_translation: bool) -> list[dict]:
    item = (f"item:id:acme|{json.loads(p['attributes'])['model'].lower()}"
            if "model" in json.loads(p["attributes"]) else f"product:{p['id']}")
    rows = [
        {"task": "query2title", "anchor": f"cari {p['title']}", "positive": p["title"], "class_id": item,
         "product_id": p["id"], "translation_group": f"tg-{p['id']}", "source_example_id": None},
        {"task": "title2category", "anchor": p["title"], "positive": p["category"],
         "class_id": f"category:id:{p['category']}", "product_id": p["id"], "translation_group": None,
         "source_example_id": None},
    ]
    for r in rows:
        r["id"] = content_id("example", "structured", "id", r["task"], r["anchor"], r["positive"])
    if with_translation:  # a translation that carries no product id: found through its source example
        src = rows[0]
        rows.append({"id": content_id("example", "translate", "th", "query2title", src["anchor"], p["id"]),
                     "task": "query2title", "anchor": src["anchor"] + " (th)", "positive": p["title"] + " (th)",
                     "class_id": src["class_id"], "product_id": None, "translation_group": f"tg-{p['id']}",
                     "source_example_id": src["id"]})
    return rows


def _insert(cat: Catalog, products: list[dict], examples: list[dict]) -> None:
    with cat.transaction() as con:
        for p in products:
            con.execute("INSERT INTO products (id, lang, market, title, category, attributes) VALUES (?,?,?,?,?,?)",
                        [p["id"], p["lang"], p["market"], p["title"], p["category"], p["attributes"]])
        for e in examples:
            con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, product_id, "
                        "translation_group, source_example_id) VALUES (?, 'structured', 'id', ?, ?, ?, ?, ?, ?, ?)",
                        [e["id"], e["task"], e["anchor"], e["positive"], e["class_id"], e["product_id"],
                         e["translation_group"], e["source_example_id"]])


def _build(path: Path, n: int, start: int = 0) -> tuple[list[dict], list[dict]]:
    products = [_product(i) for i in range(start, start + n)]
    examples = [e for p in products for e in _examples(p, with_translation=p["id"].endswith(("1", "5")))]
    with Catalog(path, create=True) as cat:
        _insert(cat, products, examples)
    return products, examples


def _splits(cat: Catalog) -> dict[str, dict]:
    return {r["example_id"]: r for r in cat.query("SELECT * FROM splits")}


def test_no_group_straddles_and_categories_stay_on_both_sides(tmp_path):
    products, examples = _build(tmp_path / "c.duckdb", 120)
    with Catalog(tmp_path / "c.duckdb") as cat:
        res = assign_splits(cat, SplitPolicy(test=0.25, dev=0.15, seed=3))
        s = _splits(cat)
        assert res["added"] == len(examples) == len(s)
        assert res["train"] and res["dev"] and res["test"]
        # one side per group, per product, per item, per translation group
        for key in ("group_id", "product_id", "class_item", "translation_group"):
            sides: dict[str, set] = {}
            for e in examples:
                pid = e["product_id"] or next(x["product_id"] for x in examples if x["id"] == e["source_example_id"])
                k = {"group_id": s[e["id"]]["group_id"], "product_id": pid,
                     "class_item": e["class_id"] if e["class_id"].startswith("item:") else None,
                     "translation_group": e["translation_group"]}[key]
                if k:
                    sides.setdefault(k, set()).add(s[e["id"]]["split"])
            assert all(len(v) == 1 for v in sides.values()), key
        # two sellers' listings of one item share a group
        item_groups = {s[e["id"]]["group_id"] for e in examples if e["class_id"] == "item:id:acme|m0"}
        assert item_groups == {"item:*:acme|m0"}
        # title2category: grouped by product, not category, so each category is in train and in test
        for c in CATS:
            sides = {s[e["id"]]["split"] for e in examples if e["positive"] == c}
            assert {"train", "test"} <= sides, c
        assert sum(r["train"] + r["dev"] + r["test"] for r in split_sizes(cat)) == len(examples)


def test_incremental_arrival_gets_the_same_rule(tmp_path):
    policy = SplitPolicy(test=0.2, dev=0.2, seed=7)
    # catalog A: everything at once
    _build(tmp_path / "a.duckdb", 90)
    with Catalog(tmp_path / "a.duckdb") as cat:
        assign_splits(cat, policy)
        once = {k: v["split"] for k, v in _splits(cat).items()}
    # catalog B: two thirds first, then the rest arrives (new products and more examples of split products)
    products, examples = _build(tmp_path / "b.duckdb", 60)
    with Catalog(tmp_path / "b.duckdb") as cat:
        first = assign_splits(cat, policy)
        rerun = assign_splits(cat)  # no policy given: the catalog's own; nothing new
        assert rerun["added"] == 0 and rerun["policy_hash"] == first["policy_hash"]
        late_products = [_product(i) for i in range(60, 90)]
        late = [e for p in late_products for e in _examples(p, with_translation=p["id"].endswith(("1", "5")))]
        _insert(cat, late_products, late)
        second = assign_splits(cat)
        assert second["added"] == len(late)
        assert {k: v["split"] for k, v in _splits(cat).items()} == once
        with pytest.raises(CompassError, match="--reset"):
            assign_splits(cat, SplitPolicy(test=0.3, dev=0.2, seed=7))
        redone = assign_splits(cat, SplitPolicy(test=0.3, dev=0.2, seed=7), reset=True)
        assert redone["added"] == len(once)


def test_policy_rejects_bad_fractions():
    with pytest.raises(CompassError, match="sum below 1"):
        SplitPolicy(test=0.6, dev=0.5)


def test_split_cli_and_stats(tmp_path, catalog, products_file):
    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    run_cli("generate", "--route", "structured", catalog=catalog)
    out = run_cli("split", "--test", "0.3", "--dev", "0.1", "--seed", "1", catalog=catalog)
    assert "newly assigned" in out.stderr and "th" in out.stdout
    again = run_cli("split", catalog=catalog)  # incremental: reuses the catalog's policy
    assert "0 examples newly assigned" in again.stderr
    bad = run_cli("split", "--test", "0.5", catalog=catalog, check=False)
    assert bad.returncode == 1 and "--reset" in bad.stderr
    stats = json.loads(run_cli("stats", "--json", catalog=catalog).stdout)
    assert stats["splits"]["policy_test"] == 0.3
    assert sum(r["train"] + r["dev"] + r["test"] for r in stats["splits"]["per_lang"]) > 0


def test_streamed_assignment_equals_the_in_memory_one(tmp_path):
    """Split streams its pending rows in batches; the result is what loading them all at once gave."""
    from compass.train import splits as sp

    products, examples = _build(tmp_path / "c.duckdb", 45)
    with Catalog(tmp_path / "c.duckdb") as cat:
        # examples without a product: one with only a translation group, one with only a class id
        with cat.transaction() as con:
            for i, tg in enumerate(("tg-orphan", None)):
                con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, "
                            "translation_group) VALUES (?, 'translate', 'th', 'query2title', ?, ?, ?, ?)",
                            [f"orphan{i}", f"a{i}", f"p{i}", f"class-{i}", tg])
        policy = SplitPolicy(test=0.3, dev=0.2, seed=5)
        # the previous way: every pending row in memory, in id order, one group_of per row
        old = cat.frame(sp._PENDING_SQL + " ORDER BY e.id")
        expected = {r["id"]: (policy.side(sp.group_of(r)), sp.group_of(r)) for r in old.iter_rows(named=True)}
        res = assign_splits(cat, policy, batch_size=7)
        got = {k: (v["split"], v["group_id"]) for k, v in _splits(cat).items()}
        assert res["added"] == len(expected) == len(examples) + 2
        assert got == expected
        assert len({s for s, _ in got.values()}) == 3


def _two_language_item(path: Path) -> None:
    """The same brand + model listed in Indonesian and in Thai (two products, two languages, one item)."""
    with Catalog(path, create=True) as cat, cat.transaction() as con:
        for i in range(40):
            for lang in ("id", "th"):
                con.execute("INSERT INTO products (id, lang, market, title, category, attributes) VALUES "
                            "(?, ?, ?, ?, 'Phones', ?)", [f"{lang}{i}", lang, lang.upper(), f"Phone X{i} {lang}",
                                                         json.dumps({"brand": "Acme", "model": f"X{i}"})])
                con.execute("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, product_id) "
                            "VALUES (?, 'structured', ?, 'query2title', ?, ?, ?, ?)",
                            [f"e-{lang}{i}", lang, f"acme x{i}", f"Phone X{i} {lang}",
                             f"item:{lang}:acme|x{i}", f"{lang}{i}"])


def test_one_item_in_two_languages_lands_on_one_side(tmp_path):
    """product-v2: the item key leaves the language out, so a Thai listing is never tested while its Indonesian
    twin trains; product-v1 (catalogs split before) keyed items per language and let them straddle."""
    _two_language_item(tmp_path / "c.duckdb")
    with Catalog(tmp_path / "c.duckdb") as cat:
        assign_splits(cat, SplitPolicy(test=0.3, dev=0.2, seed=1))
        s = _splits(cat)
        assert all(s[f"e-id{i}"]["split"] == s[f"e-th{i}"]["split"] for i in range(40))
        assert s["e-th0"]["group_id"] == "item:*:acme|x0"
        assign_splits(cat, SplitPolicy(test=0.3, dev=0.2, seed=1, grouping="product-v1"), reset=True)
        s = _splits(cat)
        assert s["e-th0"]["group_id"] == "item:th:acme|x0"
        assert any(s[f"e-id{i}"]["split"] != s[f"e-th{i}"]["split"] for i in range(40))  # the leak v2 closes


def test_a_catalog_keeps_its_grouping_until_reset(tmp_path):
    path = tmp_path / "c.duckdb"
    _two_language_item(path)
    with Catalog(path) as cat:  # split by an older compass
        assign_splits(cat, SplitPolicy(test=0.3, dev=0.2, seed=1, grouping="product-v1"))
    out = run_cli("split", catalog=path)
    assert "0 examples newly assigned" in out.stderr
    with Catalog(path) as cat:
        assert {r["grouping"] for r in cat.query("SELECT grouping FROM split_policies")} == {"product-v1"}
    run_cli("split", "--reset", catalog=path)
    with Catalog(path) as cat:
        assert cat.query("SELECT grouping FROM split_policies")[0]["grouping"] == "product-v2"
        assert cat.query("SELECT group_id FROM splits WHERE example_id = 'e-th3'")[0]["group_id"] == "item:*:acme|x3"
    with pytest.raises(CompassError, match="grouping"):
        SplitPolicy(grouping="by-brand")
