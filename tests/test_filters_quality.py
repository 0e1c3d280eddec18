"""Quality rules: one real example per reason code, plus good e-commerce text that must pass."""

from __future__ import annotations

import pytest

from compass.filters.quality import Quality, QualityConfig, repeated_share

GOOD = [
    ("th", "query2title", "รองเท้าผ้าใบ ผู้ชาย", "รองเท้าผ้าใบ Nike Air Max 90 สีดำ ของแท้ ส่งฟรี"),
    ("vi", "title2category", "Điện thoại Samsung Galaxy A54 5G 128GB", "Điện thoại & Phụ kiện > Điện thoại"),
    ("id", "query2title", "kertas thermal 57x30",
     "( ISI 30 Roll) Kertas Print Kasir thermal paper Roll 57 x 30 / 57x30"),
    ("ms", "attr_query2title", "Maggi 30 paket", "[Promosi] Maggi Mi Segera Kari Letup 30 pek Hantar Hari Ini"),
    ("fil", "query2title", "WLtoys 144001", "WLtoys RC Car 144001 1:24 Mura Lang"),
    ("my", "query2title", "ဝိတ်တုံး 3kg", "မူရင်းပစ္စည်း Bowflex SelectTech 552 ဝိတ်တုံး 3kg | အိမ်အရောက်ပို့"),
    ("km", "query2title", "ស្បែកជើង", "ស្បែកជើង Nike Air Max 90 ពណ៌ខ្មៅ"),
    ("lo", "query2title", "ເກີບ ສີດຳ", "ເກີບ Nike Air Max 90 ສີດຳ"),
    ("en", "desc2title", "Motor oil 10W-40, 1 litre, model 7100, order before 3pm for same-day dispatch",
     "NEW Motor Oil Motul 7100 4T 10W-40 1L"),
]

BAD = [
    ("vi", "query2title", "{{ query }}", "Giày thể thao nam Nike", "quality:template_leftover"),
    ("en", "query2title", "As an AI language model, I cannot browse products", "Nike Air Max 90",
     "quality:template_leftover"),
    ("th", "query2title", "assistant: รองเท้าผ้าใบ", "รองเท้าผ้าใบ Nike", "quality:template_leftover"),
    ("id", "query2title", '{"query": "sepatu lari pria"}', "Sepatu Lari Pria Nike", "quality:json_debris"),
    ("ms", "query2title", 'kasut larian\\n lelaki', "Kasut Larian Lelaki Nike", "quality:json_debris"),
    ("en", "query2title", "nike shoes www.cheapnike.com", "Nike Air Max 90", "quality:url"),
    ("fil", "desc2title", "Order na kayo sa https://shop.example/nike habang may stock pa", "Nike Air Max 90",
     "quality:url"),
    ("th", "desc2title", "สนใจสั่งซื้อโทร 081-234-5678 ส่งฟรีทั่วประเทศ", "รองเท้าผ้าใบ Nike", "quality:phone"),
    ("vi", "desc2title", "Liên hệ +84 912 345 678 để được tư vấn", "Giày thể thao nam Nike", "quality:phone"),
    ("en", "query2title", "a", "Nike Air Max 90", "quality:too_short"),
    ("en", "query2title", "great shoes " * 300, "Nike Air Max 90", "quality:too_long"),
    ("vi", "query2title", "Giày Nike  Air Max", "giày nike air max", "quality:anchor_equals_positive"),
    ("th", "desc2title", "ลดราคา " * 12, "รองเท้าผ้าใบ Nike", "quality:repeated_ngrams"),
    ("en", "desc2title", "best price best price best price best price best price best price",
     "Nike Air Max 90", "quality:repeated_ngrams"),
]


@pytest.mark.parametrize("lang,task,anchor,positive", GOOD, ids=[g[0] for g in GOOD])
def test_good_text_passes(lang, task, anchor, positive):
    assert Quality().judge({"lang": lang, "task": task, "anchor": anchor, "positive": positive}) == (True, "ok", None)


@pytest.mark.parametrize("lang,task,anchor,positive,reason", BAD, ids=[f"{b[4]}-{i}" for i, b in enumerate(BAD)])
def test_bad_text_rejected_with_reason(lang, task, anchor, positive, reason):
    keep, got, _ = Quality().judge({"lang": lang, "task": task, "anchor": anchor, "positive": positive})
    assert (keep, got) == (False, reason)


def test_length_bounds_per_language_and_task_switches():
    q = Quality(QualityConfig(min_chars={"*": 2, "th": 5}, url_tasks=["query2title"]))
    assert q.judge({"lang": "th", "task": "query2title", "anchor": "ทีวี", "positive": "ทีวี Samsung 55 นิ้ว"})[1] == \
        "quality:too_short"
    assert q.judge({"lang": "vi", "task": "query2title", "anchor": "tv", "positive": "Tivi Samsung 55 inch"})[1] == "ok"
    # URLs are only forbidden in the tasks listed.
    assert q.judge({"lang": "en", "task": "desc2title", "anchor": "see www.nike.com for sizes",
                    "positive": "Nike Air Max 90"})[1] == "ok"
    assert q.params_hash != Quality().params_hash


def test_repeated_share_counts_duplicate_ngrams():
    assert repeated_share("a b a b a b", "en") == (1 - 2 / 5, 5)
    assert repeated_share("Giày thể thao nam Nike Air Max 90", "vi")[0] == 0.0


def test_long_description_anchor_is_kept_for_truncation_not_rejected():
    desc = "Motor oil 10W-40 for scooters. " + " ".join(f"part{i} size{i * 7}" for i in range(200))
    assert len(desc) > 2000
    keep, reason, score = Quality().judge({"lang": "en", "task": "desc2title", "anchor": desc,
                                           "positive": "Motul 7100 4T 10W-40 1L"})
    assert (keep, reason, score) == (True, "quality:long_anchor", float(len(desc)))
    # only the anchor of the listed tasks: a long positive, or a long query, is still too long
    assert Quality().judge({"lang": "en", "task": "desc2title", "anchor": "oil", "positive": desc})[1] == \
        "quality:too_long"
    assert Quality().judge({"lang": "en", "task": "query2title", "anchor": desc, "positive": "Motul"})[1] == \
        "quality:too_long"
    assert Quality().judge({"lang": "en", "task": "desc2title", "anchor": desc * 10, "positive": "Motul"})[1] == \
        "quality:too_long"  # beyond long_anchor_max_chars
