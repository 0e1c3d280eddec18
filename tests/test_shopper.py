"""Shopper-style queries of the structured route: rule data, determinism, lineage, category classes, bad rule files."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import unicodedata
from collections import Counter

import polars as pl
import pytest
from conftest import SAMPLES, run_cli, write_jsonl

from compass.catalog.db import Catalog
from compass.datagen.shopper import Shopper, word_order_variants
from compass.datagen.shopper_check import check_folder, rule_checks
from compass.datagen.shopper_rules import RULES_DIR, Rates, load_rules, parse_rule_file
from compass.datagen.structured import StructuredPairs, attr_query, query_fragment
from compass.errors import CompassError

LANGS = ("th", "vi", "id", "ms", "fil", "my", "km", "lo", "en")
SCRIPT_BLOCKS = {"th": (0x0E00, 0x0E7F), "lo": (0x0E80, 0x0EFF), "my": (0x1000, 0x109F), "km": (0x1780, 0x17FF)}

PRODUCTS = [
    {"id": "vi-1", "lang": "vi", "market": "VN", "title": "Điện thoại Samsung Galaxy A15 128GB Đen Hàng chính hãng",
     "category": "Điện thoại & Phụ kiện > Điện thoại di động",
     "attributes": {"brand": "Samsung", "model": "Galaxy A15", "storage": "128GB", "colour": "Đen"},
     "description": "Điện thoại màn hình lớn, pin 5000mAh, chính hãng."},
    {"id": "vi-2", "lang": "vi", "market": "VN", "title": "Giày chạy bộ nam Adidas Duramo 10 size 42",
     "category": "Thời trang > Giày dép > Giày thể thao",
     "attributes": {"brand": "Adidas", "model": "Duramo 10", "size": "42", "colour": "Đen"}, "description": None},
    {"id": "th-1", "lang": "th", "market": "TH", "title": "Samsung Galaxy A15 สมาร์ทโฟน 128GB สีดำ ส่งฟรี",
     "category": "มือถือและอุปกรณ์เสริม > สมาร์ทโฟน",
     "attributes": {"brand": "Samsung", "model": "Galaxy A15", "storage": "128GB"}, "description": None},
    {"id": "id-1", "lang": "id", "market": "ID", "title": "Sepatu Lari Pria Nike Revolution 7 Hitam 42",
     "category": "Fashion > Sepatu > Sepatu Lari", "attributes": {"brand": "Nike", "model": "Revolution 7",
                                                                   "size": "42", "colour": "Hitam"},
     "description": "Sepatu lari ringan untuk latihan harian."},
    {"id": "km-1", "lang": "km", "market": "KH", "title": "Xiaomi Redmi Note 13 ស្មាតហ្វូន 256GB",
     "category": "ទូរស័ព្ទ និងគ្រឿងបន្លាស់ > ស្មាតហ្វូន",
     "attributes": {"brand": "Xiaomi", "model": "Redmi Note 13", "storage": "256GB"}, "description": None},
    {"id": "en-1", "lang": "en", "market": "SG", "title": "Anker Power Bank 10000mAh Black",
     "category": "Mobile & Gadgets > Power Banks", "attributes": {"brand": "Anker", "colour": "Black"},
     "description": None},
]


def _frame(rows=PRODUCTS) -> pl.DataFrame:
    return pl.DataFrame([{**r, "attributes": json.dumps(r["attributes"], ensure_ascii=False)} for r in rows])


def _rules_copy(tmp_path):
    folder = tmp_path / "rules"
    shutil.copytree(RULES_DIR, folder)
    return folder


# ---- rule data ---------------------------------------------------------------------------------------------
def test_every_rule_reproduces_its_example():
    problems, checked = check_folder()
    assert problems == []
    assert checked > 500  # 9 languages x (tables + brands both ways + generic families)
    for lang in LANGS:
        assert (RULES_DIR / f"{lang}.yaml").exists(), lang
        assert parse_rule_file(RULES_DIR / f"{lang}.yaml").lang == lang


def test_the_checker_catches_an_example_the_rule_does_not_produce(tmp_path):
    folder = _rules_copy(tmp_path)
    f = folder / "vi.yaml"
    f.write_text(f.read_text(encoding="utf-8").replace("[điện thoại xiaomi, đt xiaomi]",
                                                       "[điện thoại xiaomi, dienthoai xiaomi]"), encoding="utf-8")
    problems, _ = check_folder(folder, ["vi"])
    assert len(problems) == 1 and "vi.yaml" in problems[0] and "abbreviations.điện thoại" in problems[0]


def test_every_family_has_rules_with_examples_in_some_language():
    families = Counter()
    for lang in LANGS:
        for _file, key, *_ in rule_checks(lang):
            families[key.split(".")[0]] += 1
    for fam in ("strip_marks", "abbreviations", "code_switch", "brands", "units", "typos", "word_order",
                "casefold", "punctuation", "category_query"):
        assert families[fam] > 0, fam
    # every language has its own abbreviation/slang list and unit spellings; code-switching where not English
    for lang in LANGS:
        own = parse_rule_file(RULES_DIR / f"{lang}.yaml")
        assert own.abbreviations and own.units, lang
        assert own.code_switch or lang == "en", lang
    assert parse_rule_file(RULES_DIR / "vi.yaml").strip_marks


def test_brand_tables_cover_the_50_most_common_sample_brands():
    counts = Counter()
    for lang in LANGS:
        for line in (SAMPLES / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            if b := json.loads(line)["attributes"].get("brand"):
                counts[b] += 1
    top = [b for b, _ in counts.most_common(50)]
    floor = counts[top[-1]]
    must = sorted(b for b, n in counts.items() if n > floor) + [b for b in top if counts[b] == floor]
    for lang, (lo, hi) in SCRIPT_BLOCKS.items():
        table = parse_rule_file(RULES_DIR / f"{lang}.yaml").brands.table
        names = {b.latin for b in table}
        missing = [b for b in must if b not in names]
        assert not missing, (lang, missing)
        for b in table:  # every spelling is in the language's script (spaces and hyphens aside)
            for s in b.local:
                assert all(lo <= ord(c) <= hi for c in s if c not in " -"), (lang, b.latin, s)
    th = {b.latin: b.local for b in parse_rule_file(RULES_DIR / "th.yaml").brands.table}
    assert th["Samsung"][0] == "ซัมซุง" and th["iPhone"] == ["ไอโฟน"]


# ---- the generator -----------------------------------------------------------------------------------------
def _only(sh: Shopper, **rates) -> Shopper:
    """The language's rules with every rate at 0 except the given ones: one family fires, deterministically."""
    zero = {k: 0.0 for k in Rates.model_fields}
    sh.rates = Rates(**{**zero, **{k: v for k, v in rates.items() if k != "strip"}})
    sh.rules = sh.rules.model_copy(update={"strip_marks": [m.model_copy(update={"rate": rates.get("strip", 0.0)})
                                                           for m in sh.rules.strip_marks]})
    return sh


@pytest.mark.parametrize("lang,rates,parts,family,allowed", [
    ("vi", {"strip": 1.0}, ["điện thoại samsung"], "strip_marks", {"dien thoai samsung", "điên thoai samsung"}),
    ("vi", {"abbreviations": 1.0}, ["điện thoại xiaomi"], "abbreviations", {"đt xiaomi", "dt xiaomi",
                                                                            "đthoai xiaomi"}),
    ("id", {"code_switch": 1.0}, ["sepatu lari"], "code_switch", {"sepatu running"}),
    ("th", {"brands": 1.0}, ["samsung", "galaxy a15"], "brands", {"ซัมซุง galaxy a15"}),
    ("my", {"brands": 1.0}, ["samsung", "galaxy a15"], "brands", {"ဆမ်ဆောင်း galaxy a15"}),
    ("km", {"brands": 1.0}, ["samsung", "galaxy a15"], "brands", {"សាំងស៊ុង galaxy a15"}),
    ("lo", {"brands": 1.0}, ["samsung", "galaxy a15"], "brands", {"ຊຳຊຸງ galaxy a15"}),
    ("id", {"units": 1.0}, ["kopi bubuk", "2 ons"], "units", None),
    ("en", {"word_order": 1.0}, ["nike", "air force 1", "white"], "word_order", None),
    ("en", {"casefold": 1.0}, ["Xiaomi Redmi"], "casefold", {"xiaomi redmi"}),
    ("en", {"punctuation": 1.0}, ["Levi's 511"], "punctuation", {"Levis 511"}),
    ("th", {"typo": 1.0, "typo_neighbour": 1.0}, ["ครีมกันแดด"], "typo", None),
    ("en", {"typo": 1.0, "typo_drop": 1.0}, ["samsung"], "typo", None),
    ("en", {"typo": 1.0, "typo_double": 1.0}, ["samsung"], "typo", None),
])
def test_each_family_fires_in_the_pipeline_and_is_recorded(lang, rates, parts, family, allowed):
    sh = _only(Shopper(lang), **rates)
    q = sh.transform(parts, random.Random(0))
    assert [s["family"] for s in q.steps] == [family]
    step = q.steps[0]
    assert step["from"] == q.base == " ".join(parts) and step["to"] == q.text != q.base
    if allowed:
        assert q.text in allowed
    if family == "units":
        assert re.fullmatch(r"kopi bubuk (2 ?ons|200 ?(g|gr|gram)|0\.2 ?(kg|kilo))", q.text), q.text
    if family == "word_order":
        assert q.text in {" ".join(v) for v in word_order_variants(parts)} and "air force 1" in q.text
    if family == "typo":
        kind = [k for k in ("neighbour", "drop", "double") if rates.get(f"typo_{k}")][0]
        assert step["rule"] == f"typo.{kind}"
        delta = len(q.text) - len(q.base)
        assert delta == {"neighbour": 0, "drop": -1, "double": 1}[kind]


def test_pairs_are_deterministic_from_seed_and_carry_lineage():
    a = StructuredPairs(seed=7).pairs_frame(_frame())
    b = StructuredPairs(seed=7).pairs_frame(_frame())
    c = StructuredPairs(seed=8).pairs_frame(_frame())
    assert a.equals(b)
    shopper_tasks = pl.col("task").is_in(["query2title", "category_query2title"])
    assert a.filter(shopper_tasks)["anchor"].to_list() != c.filter(shopper_tasks)["anchor"].to_list()
    lin = a.filter(shopper_tasks)
    assert lin["transforms"].null_count() == 0
    for anchor, t in zip(lin["anchor"], lin["transforms"]):
        t = json.loads(t)
        text = t["base"]
        for s in t["steps"]:  # the steps chain from the base to the anchor
            assert s["from"] == text
            text = s["to"]
        assert text == anchor
    assert a.filter(pl.col("task") == "title2category")["transforms"].null_count() == len(PRODUCTS)


def test_category_queries_take_the_category_class_and_item_queries_the_item():
    out = StructuredPairs(seed=0).pairs_frame(_frame())
    for pid in ("vi-1", "vi-2", "th-1", "id-1", "km-1", "en-1"):
        rows = {r["task"]: r for r in out.filter(pl.col("product_id") == pid).iter_rows(named=True)}
        cat = rows["category_query2title"]
        assert cat["class_id"] == rows["title2category"]["class_id"]
        assert cat["class_id"].startswith(f"category:{cat['lang']}:")
        assert json.loads(cat["transforms"])["base"].startswith(rows["title2category"]["positive"].split(" > ")[-1])
        if pid != "en-1":  # brand + model -> the item class
            assert rows["query2title"]["class_id"].startswith("item:")
    with_attrs = [json.loads(t)["base"] for t in out.filter(pl.col("task") == "category_query2title")["transforms"]]
    assert max(len(b.split()) for b in with_attrs) > 2  # some category queries carry attribute values


def test_no_shopper_keeps_the_old_pairs_and_attribute_queries_do_not_change():
    old = StructuredPairs(seed=3, shopper=False).pairs_frame(_frame())
    new = StructuredPairs(seed=3).pairs_frame(_frame())
    assert set(old["task"]) == {"query2title", "title2category", "attr_query2title", "desc2title"}
    for r in old.filter(pl.col("task") == "query2title").iter_rows(named=True):
        rng = random.Random(f"3:{r['product_id']}")
        assert r["anchor"] == query_fragment(r["positive"], rng) and r["transforms"] is None
    attr = lambda f: f.filter(pl.col("task") == "attr_query2title").sort("product_id")["anchor"].to_list()  # noqa: E731
    assert attr(old) == attr(new)
    prod = {p["id"]: p for p in PRODUCTS}
    for r in old.filter(pl.col("task") == "attr_query2title").iter_rows(named=True):
        rng = random.Random(f"3:{r['product_id']}")
        query_fragment(prod[r["product_id"]]["title"], rng)
        assert r["anchor"] == attr_query(prod[r["product_id"]], rng)


def test_lineage_is_stored_in_the_catalog_and_reruns_add_nothing(tmp_path):
    from compass.catalog.ingest import ingest_file
    from compass.datagen.structured_run import run_structured

    rows = [{k: v for k, v in p.items() if k not in ("lang", "market")} for p in PRODUCTS if p["lang"] == "vi"]
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    ingest_file(cat, write_jsonl(tmp_path / "vi.jsonl", rows), "vi", "VN", None, "fail", "r")
    run_structured(cat, "r1", seed=5, progress=False)
    sql = ("SELECT e.task, e.anchor, t.kind, t.base, t.steps, t.run_id FROM examples e "
           "JOIN example_transforms t ON t.example_id = e.id ORDER BY e.id")
    out = cat.query(sql)
    assert {r["task"] for r in out} == {"query2title", "category_query2title"} and len(out) == 4
    assert {r["kind"] for r in out} == {"item", "category"} and {r["run_id"] for r in out} == {"r1"}
    assert all(isinstance(json.loads(r["steps"]), list) for r in out)
    run_structured(cat, "r2", seed=5, progress=False)  # rerun adds nothing
    assert cat.query(sql) == out
    assert cat.scalar("SELECT count(*) FROM examples WHERE task = 'category_query2title'") == 2
    cat.close()


# ---- bad rule files ----------------------------------------------------------------------------------------
def test_a_language_without_a_rule_file_gets_generic_rules_and_one_warning(tmp_path, caplog):
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(RULES_DIR / "generic.yaml", folder / "generic.yaml")
    with caplog.at_level(logging.WARNING, logger="compass.datagen.shopper"):
        out = StructuredPairs(seed=0, rules_dir=str(folder)).pairs_frame(_frame())
        StructuredPairs(seed=1, rules_dir=str(folder)).pairs_frame(_frame())
    warned = [r.getMessage() for r in caplog.records if "no shopper rule file" in r.getMessage()]
    assert len([w for w in warned if str(folder / "vi.yaml") in w]) == 1
    assert set(out["lang"]) == {"vi", "th", "id", "km", "en"}
    rules, _ = load_rules("vi", folder)
    assert not rules.strip_marks and not rules.abbreviations and rules.units  # generic only


@pytest.mark.parametrize("old,new,needle", [
    ("\nabbreviations:", "\nabbreviation:", "unknown key 'abbreviation': did you mean 'abbreviations'?"),
    ("  abbreviations: 0.6", "  abbrevs: 0.6", "unknown key 'rates.abbrevs': did you mean 'abbreviations'?"),
    ("    rate: 0.45", "    rate: 4.5", "key 'strip_marks.0.rate'"),
    ("    example: [điện thoại samsung, dien thoai samsung]\n", "", "key 'strip_marks.0.example' is missing"),
    ("lang: vi", "lang: vn", "key 'lang' is 'vn'"),
    ("  - {src: không, to:", "  - {src: không, tos:", "unknown key 'abbreviations.3.tos': did you mean 'to'?"),
    ("\nstrip_marks:", "\nunits: [\nstrip_marks:", "not valid YAML"),
])
def test_a_malformed_rule_file_fails_the_check_naming_file_key_and_fix(tmp_path, old, new, needle):
    folder = _rules_copy(tmp_path)
    f = folder / "vi.yaml"
    text = f.read_text(encoding="utf-8")
    assert old in text
    f.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(CompassError) as e:
        check_folder(folder)
    assert str(f) in str(e.value) and needle in str(e.value), str(e.value)


def test_a_malformed_rule_file_stops_generation_before_anything_is_written(tmp_path):
    from compass.catalog.ingest import ingest_file
    from compass.datagen.structured_run import run_structured

    folder = _rules_copy(tmp_path)
    (folder / "km.yaml").write_text("lang: km\nbrands: [1, 2]\n", encoding="utf-8")
    rows = [{k: v for k, v in p.items() if k not in ("lang", "market")} for p in PRODUCTS if p["lang"] == "vi"]
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    ingest_file(cat, write_jsonl(tmp_path / "vi.jsonl", rows), "vi", "VN", None, "fail", "r")
    with pytest.raises(CompassError, match=r"km\.yaml: key 'brands'"):
        run_structured(cat, "r1", rules_dir=str(folder), progress=False)
    with pytest.raises(CompassError, match="no such folder"):
        run_structured(cat, "r1", rules_dir=str(tmp_path / "nope"), progress=False)
    assert cat.scalar("SELECT count(*) FROM examples") == 0
    cat.close()


@pytest.mark.slow
def test_generate_check_cli(tmp_path):
    ok = run_cli("generate", "--check")
    assert "rule examples reproduced" in ok.stdout + ok.stderr
    folder = _rules_copy(tmp_path)
    (folder / "th.yaml").write_text((folder / "th.yaml").read_text(encoding="utf-8").replace(
        "code_switch:", "codeswitch:", 1), encoding="utf-8")
    proc = run_cli("generate", "--check", "--rules", str(folder), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{folder / 'th.yaml'}: unknown key 'codeswitch': did you mean 'code_switch'?" in proc.stderr


def test_marks_are_dropped_the_way_vietnamese_shoppers_type():
    sh = _only(Shopper("vi"), strip=1.0)
    q = sh.transform(["Giày chạy bộ nam", "size 42"], random.Random(0))
    assert q.text == "Giay chay bo nam size 42"
    assert all(unicodedata.category(c) != "Mn" for c in unicodedata.normalize("NFD", q.text))


def test_typos_in_abugidas_never_leave_a_hanging_mark_or_a_broken_cluster():
    from compass.datagen.shopper import typo_variants

    for word in ("ឡេហ្គោ ស្មាតហ្វូន", "ဆမ်ဆောင်း စမတ်ဖုန်း", "หม้อหุงข้าว น้ำหอม", "ໝໍ້ຫຸງເຂົ້າ ດຳເບວ"):
        for kind in ("drop", "double"):
            for v in typo_variants(word, kind, {}):
                for w in v.split():
                    assert not unicodedata.category(w[0]).startswith("M") and w[0] not in "ะาำະາຳ", (word, kind, v)
                for i, ch in enumerate(v):
                    if ch in "\u17d2\u1039":  # coeng / virama: stacks the next consonant on the previous one
                        assert v[i - 1].isalpha() and v[i + 1].isalpha(), (word, kind, v)
    assert typo_variants("ឡេហ្គោ", "drop", {}) == []  # every letter there carries a sign or sits in a cluster
