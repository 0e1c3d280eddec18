"""`compass filter` end to end on real catalogs: planted bad examples are rejected with the right reason, good
structured examples are kept, a rerun adds nothing, `compass stats` shows the funnel; eval leakage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SAMPLES, run_cli, write_jsonl
from test_filters_dedup import add

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.filters.base import run_filter
from compass.filters.leakage import Leakage, LeakageConfig, load_eval_texts

LANG_MARKET = {"th": "TH", "vi": "VN", "id": "ID", "ms": "MY", "fil": "PH", "my": "MM", "km": "KH", "lo": "LA",
               "en": "SG"}
VI_PRODUCTS = [
    {"id": "vi-1", "title": "Giày thể thao nam Nike Air Max 90 màu đen chính hãng",
     "category": "Giày dép nam > Giày thể thao",
     "attributes": {"brand": "Nike", "model": "Air Max 90", "color": "đen"},
     "description": "Giày thể thao nam êm chân, đế cao su chống trượt, phù hợp chạy bộ mỗi ngày.", "price": 2500000,
     "currency": "VND"},
    {"id": "vi-2", "title": "Nồi cơm điện Philips HD3115 1.8 lít chống dính", "category": "Đồ gia dụng > Nồi cơm điện",
     "attributes": {"brand": "Philips", "model": "HD3115", "capacity": "1.8 lít"},
     "description": "Nồi cơm điện lòng chống dính, nấu nhanh, giữ ấm lâu, dễ vệ sinh.", "price": 990000,
     "currency": "VND"},
]


def eval_dir(tmp_path: Path) -> Path:
    d = tmp_path / "evals"
    (d / "vi_query2product").mkdir(parents=True, exist_ok=True)
    write_jsonl(d / "vi_query2product" / "queries.jsonl",
                [{"_id": "q1", "text": "nồi cơm điện philips 1.8 lít chống dính nấu nhanh giữ ấm lâu"}])
    write_jsonl(d / "vi_query2product" / "corpus.jsonl", [{"_id": "d1", "title": "", "text": "Quạt điện Panasonic"}])
    write_jsonl(d / "th_reviews.jsonl", [{"text": "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า"}])
    return d


PLANTED = [  # (lang, task, anchor, positive, expected reason)
    ("th", "desc2title", "This pair of running shoes is very comfortable and ships from our local warehouse today",
     "รองเท้าผ้าใบ Nike Air Max 90 สีดำ", "langid:wrong_lang:en"),
    ("my", "query2title", "ဖိနပ္ အနက္ေရာင္", "ဖိနပ် Nike Air Max 90 အနက်ရောင်", "langid:zawgyi"),
    ("lo", "query2title", "รองเท้า สีดำ", "ເກີບ Nike Air Max 90 ສີດຳ", "langid:wrong_lang:th"),
    ("ms", "desc2title", "Saya mau beli sepatu ini untuk anak saya karena harganya murah banget",
     "Kasut Larian Lelaki Nike Air Zoom Pegasus 40", "langid:wrong_lang:id"),
    ("vi", "query2title", "{{ query }} giày nike", "Giày thể thao nam Nike", "quality:template_leftover"),
    ("vi", "query2title", '{"query": "giày nike nam"}', "Giày thể thao nam Nike", "quality:json_debris"),
    ("vi", "desc2title", "Liên hệ 0912 345 678 để mua giày thể thao nam giá tốt", "Giày thể thao nam Nike",
     "quality:phone"),
    ("vi", "query2title", "Giày thể thao nam Nike", "giày thể thao  nam nike", "quality:anchor_equals_positive"),
    ("vi", "desc2title", "Giày thể thao nam êm chân, đế cao su chống trượt, phù hợp chạy bộ mỗi ngày. sale",
     "Giày thể thao nam Nike Air Max 90 màu đen chính hãng", "dedup:near_dup_of:"),
    ("vi", "query2title", "nồi cơm điện philips 1.8 lít chống dính nấu nhanh giữ ấm lâu nhất",
     "Nồi cơm điện Philips HD3115 1.8 lít chống dính", "leakage:eval_near_dup:vi_query2product"),
    ("th", "desc2title", "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า", "รองเท้าผ้าใบ Nike Air Max 90 สีดำ",
     "leakage:eval_exact:th_reviews"),
]


def test_filter_end_to_end(tmp_path, catalog):
    run_cli("ingest", str(write_jsonl(tmp_path / "vi.jsonl", VI_PRODUCTS)), "--lang", "vi", "--market", "VN",
            catalog=catalog)
    run_cli("generate", "--route", "structured", catalog=catalog)
    with Catalog(catalog) as cat:
        good = [r["id"] for r in cat.query("SELECT id FROM examples ORDER BY id")]
        planted = add(cat, [p[:4] for p in PLANTED], start=10**6)   # created later than the structured ones
    out = run_cli("filter", "--against", str(eval_dir(tmp_path)), catalog=catalog)
    assert "langid" in out.stdout and "leakage" in out.stdout
    with Catalog(catalog, read_only=True) as cat:
        decisions = {(r["example_id"], r["stage"]): r for r in cat.query("SELECT * FROM decisions")}
        for eid, p in zip(planted, PLANTED):
            rejected = [d for (e, _), d in decisions.items() if e == eid and not d["keep"]]
            assert len(rejected) == 1 and rejected[0]["reason"].startswith(p[4]), (p, rejected)
        near = [d for (e, s), d in decisions.items() if e == planted[8] and s == "dedup"][0]
        desc = cat.scalar("SELECT e.id FROM examples e JOIN products p ON p.id = e.product_id "
                          "WHERE e.task = 'desc2title' AND p.source_id = 'vi-1'")
        assert near["reason"] == f"dedup:near_dup_of:{desc}"
        kept = {r["id"] for r in cat.query("SELECT id FROM kept_examples")}
        assert set(good) <= kept and not kept & set(planted)
        n = cat.scalar("SELECT count(*) FROM decisions")
        assert cat.scalar("SELECT count(DISTINCT params_hash) FROM decisions") == 4
    # Rerun: every stage finds nothing pending.
    again = run_cli("filter", "--against", str(eval_dir(tmp_path)), catalog=catalog)
    assert "nothing to judge" in again.stderr
    with Catalog(catalog, read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM decisions") == n
    stats = json.loads(run_cli("stats", "--json", catalog=catalog).stdout)["filters"]
    vi = [r for r in stats["funnel"] if r["lang"] == "vi"][0]
    assert vi["examples"] == len(good) + 6
    assert (vi["langid"], vi["quality"], vi["dedup"], vi["leakage"]) == (len(good) + 6, len(good) + 2,
                                                                          len(good) + 1, len(good))
    assert {"stage": "quality", "reason": "quality:phone", "count": 1} in stats["reject_reasons"]
    by_task = json.loads(run_cli("stats", "--json", "--by", "lang,task", catalog=catalog).stdout)["filters"]
    assert {"lang", "task", "examples", "langid", "kept_pct"} <= set(by_task["funnel"][0])


def test_filter_cli_errors_are_one_line(tmp_path, catalog):
    r = run_cli("filter", "--stages", "langid,spam", catalog=catalog, check=False)
    assert r.returncode == 1 and "unknown stage" in r.stderr
    r = run_cli("filter", "--stages", "leakage", catalog=catalog, check=False)
    assert r.returncode == 1 and "--against" in r.stderr
    bad = tmp_path / "cfg.json"
    bad.write_text('{"langid": {"short_words": "many"}}')
    r = run_cli("filter", "--config", str(bad), catalog=catalog, check=False)
    assert r.returncode == 1 and "short_words" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    broken = tmp_path / "ev"
    broken.mkdir()
    (broken / "x.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CompassError, match=r"x.jsonl:2: not JSON"):
        load_eval_texts(broken)


def test_leakage_stage_names_eval_task(tmp_path):
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    ids = add(cat, [
        ("vi", "query2title", "nồi cơm điện philips 1.8 lít chống dính nấu nhanh giữ ấm lâu", "Nồi cơm điện Philips"),
        ("vi", "query2title", "quạt điện", "Quạt điện Panasonic"),                       # positive = corpus doc
        ("vi", "query2title", "áo thun nam", "Áo thun nam cotton"),
        ("th", "query2title", "ขอบคุณร้านค้า", "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า!!"),
    ])
    res = run_filter(cat, Leakage(LeakageConfig(against=str(eval_dir(tmp_path)))), "r", progress=False)
    assert res["rejected"] == 3
    got = dict(cat.con.execute("SELECT example_id, reason FROM decisions").fetchall())
    assert got == {ids[0]: "leakage:eval_exact:vi_query2product", ids[1]: "leakage:eval_exact:vi_query2product",
                   ids[2]: "ok", ids[3]: "leakage:eval_near_dup:th_reviews"}  # "!!" differs, shingles do not
    cat.close()


@pytest.mark.slow
@pytest.mark.skipif(not (SAMPLES / "th.jsonl").exists(), reason="bundled sample catalogs not built")
def test_sample_catalog_keeps_good_structured_examples(tmp_path):
    from compass.catalog.ingest import ingest_file
    from compass.datagen.structured_run import run_structured
    from compass.filters.langid import LangId
    from compass.filters.quality import Quality

    cat = Catalog(tmp_path / "s.duckdb", create=True)
    for lang, market in LANG_MARKET.items():
        ingest_file(cat, SAMPLES / f"{lang}.jsonl", lang, market, None, "fail", "r")
    run_structured(cat, "r", progress=False)
    for f in (LangId(), Quality()):
        run_filter(cat, f, "r", progress=False)
    rates = {r["lang"]: r["rate"] for r in cat.query(
        "SELECT e.lang, avg(CASE WHEN k.id IS NULL THEN 0 ELSE 1 END) AS rate FROM examples e "
        "LEFT JOIN kept_examples k ON k.id = e.id GROUP BY e.lang")}
    cat.close()
    assert set(rates) == set(LANG_MARKET)
    assert all(r >= 0.97 for r in rates.values()), rates


def test_leakage_catches_a_near_duplicate_of_eval_that_appears_twice_in_a_batch(tmp_path):
    """Two examples share one positive that near-duplicates an eval text: the second copy matches the first
    (a training text) in the index, yet it is in the eval text's cluster and must be rejected too."""
    cat = Catalog(tmp_path / "c.duckdb", create=True)
    leaked = "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า!!"   # near-dup of th_reviews
    ids = add(cat, [("th", "query2title", "ร้านนี้ส่งไว", leaked), ("th", "desc2title", "รีวิวร้านค้า ส่งไว", leaked),
                    ("th", "query2title", "รองเท้า", "รองเท้าผ้าใบ Nike Air Force 1")])
    res = run_filter(cat, Leakage(LeakageConfig(against=str(eval_dir(tmp_path)))), "r", progress=False)
    got = dict(cat.con.execute("SELECT example_id, reason FROM decisions").fetchall())
    cat.close()
    assert got == {ids[0]: "leakage:eval_near_dup:th_reviews", ids[1]: "leakage:eval_near_dup:th_reviews",
                   ids[2]: "ok"}
    assert res["rejected"] == 2


def test_leakage_against_several_folders_names_every_matching_task(tmp_path, catalog):
    a, b = tmp_path / "sea-retrieval", tmp_path / "vi-products"
    a.mkdir()
    write_jsonl(a / "queries.jsonl", [{"text": "quạt điện panasonic"}])
    (b / "query2product").mkdir(parents=True)
    write_jsonl(b / "query2product" / "corpus.jsonl", [{"title": "Quạt điện Panasonic", "text": ""}])
    write_jsonl(b / "reviews.jsonl",
                [{"text": "Quạt điện Panasonic  "}, {"text": "giao hàng nhanh, đóng gói cẩn thận"}])
    with Catalog(catalog) as cat:
        ids = add(cat, [("vi", "query2title", "quạt", "Quạt điện Panasonic"),
                        ("vi", "query2title", "giao hàng nhanh, đóng gói cẩn thận lắm", "Nồi cơm điện")])
    out = run_cli("filter", "--stages", "leakage", "--against", str(a), "--against", str(b), catalog=catalog)
    assert "leakage" in out.stdout
    with Catalog(catalog, read_only=True) as cat:
        got = dict(cat.con.execute("SELECT example_id, reason FROM decisions").fetchall())
    assert got == {ids[0]: "leakage:eval_exact:sea-retrieval/queries,vi-products/query2product,vi-products/reviews",
                   ids[1]: "leakage:eval_near_dup:vi-products/reviews"}
    # one folder keeps today's task names (no folder prefix)
    assert {t for t, _ in load_eval_texts(b)} == {"query2product", "reviews"}


def test_leakage_folders_with_one_name_are_refused(tmp_path):
    from compass.filters.leakage import load_eval_folders

    for d in (tmp_path / "a" / "evals", tmp_path / "b" / "evals"):
        d.mkdir(parents=True)
        write_jsonl(d / "q.jsonl", [{"text": "x y z"}])
    with pytest.raises(CompassError, match="two folders are named 'evals'"):
        load_eval_folders([tmp_path / "a" / "evals", tmp_path / "b" / "evals"])


def test_filter_against_a_then_b_judges_b_and_the_card_lists_both(tmp_path, catalog):
    """Decisions are keyed by their parameters: checking against a second eval set judges the kept examples
    again (an exact copy of a B text is rejected), a rerun with B is "nothing to judge", stats count each
    example once, and the dataset card lists both eval sets as checked."""
    a, b = tmp_path / "evalA", tmp_path / "evalB"
    a.mkdir()
    b.mkdir()
    write_jsonl(a / "queries.jsonl", [{"text": "quạt điện panasonic loại lớn"}])
    write_jsonl(b / "queries.jsonl", [{"text": "áo thun nam cotton cổ tròn màu trắng"}])
    with Catalog(catalog) as cat:
        ids = add(cat, [("vi", "query2title", "quạt điện panasonic loại lớn", "Quạt điện Panasonic F-409K"),
                        ("vi", "query2title", "Áo thun nam cotton cổ tròn màu trắng", "Áo thun nam Coolmate"),
                        ("vi", "query2title", "nồi cơm điện", "Nồi cơm điện Philips HD3115")])
    run_cli("filter", "--stages", "quality", "--against", str(a), catalog=catalog)
    with Catalog(catalog, read_only=True) as cat:
        assert {r["id"] for r in cat.query("SELECT id FROM kept_examples")} == {ids[1], ids[2]}
    out = run_cli("filter", "--stages", "quality", "--against", str(b), catalog=catalog)
    assert "nothing to judge" not in out.stderr + out.stdout
    with Catalog(catalog, read_only=True) as cat:
        got = {(r["example_id"], r["params_hash"]): r["reason"] for r in cat.query(
            "SELECT example_id, params_hash, reason FROM decisions WHERE stage = 'leakage'")}
        kept = {r["id"] for r in cat.query("SELECT id FROM kept_examples")}
        # A rejected ids[0]; B judged only what A kept (ids[1], ids[2]) and rejected the copy of its text.
        assert sorted(got.values()) == ["leakage:eval_exact:queries"] * 2 + ["ok"] * 3
        assert len({h for _, h in got}) == 2 and sum(e == ids[0] for e, _ in got) == 1
        assert kept == {ids[2]}
        n = cat.scalar("SELECT count(*) FROM decisions")
    again = run_cli("filter", "--stages", "quality", "--against", str(b), catalog=catalog)
    assert "nothing to judge" in again.stderr
    with Catalog(catalog, read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM decisions") == n
    stats = json.loads(run_cli("stats", "--json", catalog=catalog).stdout)["filters"]
    vi = [r for r in stats["funnel"] if r["lang"] == "vi"][0]
    assert (vi["examples"], vi["quality"], vi["leakage"]) == (3, 3, 1)
    reasons = {r["reason"]: r["count"] for r in stats["reject_reasons"] if r["stage"] == "leakage"}
    assert reasons == {"leakage:eval_exact:queries": 2}
    card_dir = tmp_path / "card"
    run_cli("publish", "me/x", "--to-dir", str(card_dir), "--langs", "vi", catalog=catalog)
    prov = json.loads((card_dir / "compass_provenance.json").read_text(encoding="utf-8"))
    assert {e["eval_set"] for e in prov["eval_sets"]} == {"evalA", "evalB"}
    card = (card_dir / "README.md").read_text(encoding="utf-8")
    assert "Checked against eval sets" in card and "evalA" in card and "evalB" in card
    # The examples checked per set: A checked all three, B the two A kept.
    assert sorted((e["eval_set"], e["checked"], e["rejected"]) for e in prov["eval_sets"]) == \
        [("evalA", 3, 1), ("evalB", 2, 1)]
