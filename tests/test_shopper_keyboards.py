"""Keyboard-neighbour typos in the abugidas (km, lo, my, th) and the documented typo rates."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from compass.datagen.shopper import Shopper, key_class, typo_variants
from compass.datagen.shopper_rules import RULES_DIR, Rates, parse_rule_file

README = Path(__file__).resolve().parents[1] / "README.md"

# Real queries (a noun of each file's tables, a brand), per language: letters on both keyboard levels.
QUERIES = {
    "km": ["ទូរស័ព្ទដៃ samsung", "ស្បែកជើងប៉ាតា nike", "អាវយឺត uniqlo", "កាបូបស្ពាយ herschel", "សេរ៉ូម garnier",
           "ឆ្នាំងចៀនគ្មានប្រេង philips", "ឡេការពារកម្តៅថ្ងៃ anessa", "ចំណីឆ្មា me-o"],
    "lo": ["ເສື້ອຢືດ uniqlo", "ຫູຟັງ sony", "ເກີບຜ້າໃບ nike", "ກະເປົາເປ້ herschel", "ໝໍ້ທອດໄຮ້ນ້ຳມັນ philips",
           "ຄີມກັນແດດ biore", "ໂທລະສັບມືຖື samsung"],
    "my": ["ဖုန်း samsung", "ဂျင်းဘောင်းဘီ levi's", "နားကြပ် sony", "ကျောပိုးအိတ် herschel", "တီရှပ် uniqlo",
           "နေလောင်ကာခရင်မ် anessa", "အသင့်စားခေါက်ဆွဲ mama", "ဒေါက်ဖိနပ်"],
    "th": ["ได้ครีมกันแดด", "หม้อหุงข้าว sharp", "เสื้อยืดผู้ชาย", "รองเท้าผ้าใบ converse", "กระเป๋าเป้ herschel"],
}
JOINERS = "\u17d2\u1039"  # Khmer coeng, Myanmar virama


def _grid(rows: list[str]) -> dict[str, set[tuple[float, int]]]:
    """Character -> its key positions (x, row); each row sits half a key right of the one above."""
    pos: dict[str, set] = {}
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            pos.setdefault(ch, set()).add((c + 0.5 * r, r))
    return pos


def _adjacent(a: str, b: str, keyboards) -> bool:
    """Whether some key of `a` touches some key of `b` on one keyboard level (geometry, not the code under test)."""
    for kb in keyboards:
        g = _grid(kb.rows)
        for xa, ra in g.get(a, ()):
            for xb, rb in g.get(b, ()):
                if (ra == rb and abs(xa - xb) == 1) or (abs(ra - rb) == 1 and abs(xa - xb) == 0.5):
                    return True
    return False


def _well_formed(text: str) -> bool:
    """No word starts with a sign; a joiner sits between two letters; no two signs of one class in a cluster."""
    for w in text.split():
        if unicodedata.category(w[0]).startswith("M"):
            return False
        seen: list[str] = []
        for i, ch in enumerate(w):
            if ch in JOINERS and not (0 < i < len(w) - 1 and w[i - 1].isalpha() and w[i + 1].isalpha()):
                return False
            if unicodedata.category(ch).startswith("M"):
                if key_class(ch) and key_class(ch) in seen:
                    return False
                seen.append(key_class(ch))
            elif ch not in JOINERS and (i == 0 or w[i - 1] not in JOINERS):
                seen = []  # a new base letter starts a new cluster
    return True


@pytest.mark.parametrize("lang", ["km", "lo", "my", "th"])
def test_a_neighbour_typo_types_a_neighbouring_key_of_the_same_class_and_keeps_clusters(lang):
    own = parse_rule_file(RULES_DIR / f"{lang}.yaml").typos.keyboards
    assert own, f"{lang}.yaml has no keyboard"
    sh = Shopper(lang)
    local = re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]")
    changed_marks = changed_letters = 0
    for q in QUERIES[lang]:
        assert _well_formed(q), q
        variants = typo_variants(q, "neighbour", sh.nb)
        assert variants, q
        for v in variants:
            diff = [i for i, (a, b) in enumerate(zip(q, v)) if a != b]
            assert len(v) == len(q) and len(diff) == 1, (q, v)
            a, b = q[diff[0]], v[diff[0]]
            if local.match(a):  # a local letter: the language's own layout, never QWERTY
                assert _adjacent(a, b, own), (q, v, a, b)
                assert key_class(a) == key_class(b) is not None, (q, v, a, b)
                if unicodedata.category(a).startswith("M"):
                    changed_marks += 1
                else:
                    changed_letters += 1
            else:
                assert re.fullmatch(r"[a-z]", a) and re.fullmatch(r"[a-z]", b), (q, v)
            assert _well_formed(v), (q, v, a, b)
    assert changed_letters and changed_marks  # consonants and vowel signs both get typos


def test_the_pipeline_records_a_khmer_neighbour_typo():
    sh = Shopper("km")
    zero = {k: 0.0 for k in Rates.model_fields}
    sh.rates = Rates(**{**zero, "typo": 1.0, "typo_neighbour": 1.0})
    q = sh.transform(["ទូរស័ព្ទដៃ"], random.Random(3))
    assert [s["rule"] for s in q.steps] == ["typo.neighbour"]
    nida = parse_rule_file(RULES_DIR / "km.yaml").typos.keyboards
    (i,) = [i for i, (a, b) in enumerate(zip(q.base, q.text)) if a != b]
    assert _adjacent(q.base[i], q.text[i], nida) and _well_formed(q.text)


def test_thai_consonants_never_become_vowels():
    # ด sits next to เ on Kedmanee: "ได้" -> "ไเ้" would hang a tone mark on a vowel
    nb = Shopper("th").nb
    assert "ไเ้" not in {v[:3] for v in typo_variants("ได้ครีม", "neighbour", nb)}
    assert all(_well_formed(v) for v in typo_variants("ได้ครีม", "neighbour", nb))


def _documented_typo_rates() -> dict[str, float]:
    row = next(line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| typos ("))
    m = re.search(r"typos \(([\d.]+) per query\): keyboard neighbour (\d+)%, dropped letter (\d+)%, "
                  r"doubled letter (\d+)%", row)
    assert m, row
    return {"typo": float(m[1]), "neighbour": int(m[2]) / 100, "drop": int(m[3]) / 100, "double": int(m[4]) / 100}


@pytest.mark.parametrize("lang", ["km", "lo", "my", "en"])
def test_documented_typo_rates_match_the_rules_and_a_seeded_sample(lang):
    doc = _documented_typo_rates()
    sh = Shopper(lang)
    rt = sh.rates
    total = rt.typo_neighbour + rt.typo_drop + rt.typo_double
    assert rt.typo == doc["typo"]
    for kind in ("neighbour", "drop", "double"):
        assert getattr(rt, f"typo_{kind}") / total == pytest.approx(doc[kind])
    queries = QUERIES.get(lang, ["samsung galaxy a15", "nike air force", "anker power bank", "royal canin indoor"])
    n, kinds = 4000, Counter()
    for i in range(n):
        q = sh.transform([queries[i % len(queries)]], random.Random(i))
        kinds.update(s["rule"].split(".")[1] for s in q.steps if s["family"] == "typo")
    typos = sum(kinds.values())
    # binomial spread: 4000 queries -> sd 0.006 for the 0.15 rate; ~600 typos -> sd 0.02 for a kind's share
    assert typos / n == pytest.approx(doc["typo"], abs=0.025), (lang, typos / n)
    for kind in ("neighbour", "drop", "double"):
        assert kinds[kind] / typos == pytest.approx(doc[kind], abs=0.07), (lang, kind, kinds)
