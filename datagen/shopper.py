"""Shopper-style queries: a base query from product fields, then rules from `datagen/rules/*.yaml`.

Every rule family exposes `variants(text)`: every string one application can produce (an empty list when the rule
does not apply). Generation picks one variant with a seeded RNG; the test of the rule data checks that each rule's
example output is among the variants of its example input. Each applied rule is recorded as a lineage step
`{"family", "rule", "from", "to"}`.

Order of the pipeline (why: parts are reordered while they are still known; table lookups come next, while words
are still spelled as in the title; noise last, as a shopper's fingers add it last): word_order -> units ->
abbreviations -> code_switch -> brands -> casefold -> punctuation -> strip_marks -> typo.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from dataclasses import dataclass, field

from compass.datagen.shopper_rules import RuleFile, load_rules

Step = dict


def _is_latin_word_char(ch: str) -> bool:
    return ch.isalnum() and ord(ch) < 0x250


@functools.lru_cache(maxsize=1 << 16)
def _needle(needle: str) -> tuple[str, bool]:
    """(lowercased needle, whether it is all Latin): once per rule entry, not once per query x entry."""
    n = needle.lower()
    return n, all(ord(c) < 0x250 for c in n)


def find_word(text: str, needle: str, spaces: bool, low: str | None = None) -> int:
    """Index of `needle` in `text` (case-insensitive), at word edges where the script uses spaces; -1 if absent.
    Why not \\b: Thai/Lao/Khmer/Burmese combining vowels are not \\w, and a Latin brand inside Thai text has no
    spaces around it, so a boundary is "no Latin letter or digit next to it" for Latin needles.
    `low`: text.lower(), when the caller looks up many needles in one text."""
    low = text.lower() if low is None else low
    n, latin = _needle(needle)
    start = 0
    while (i := low.find(n, start)) >= 0:
        if not (latin or spaces):
            return i
        before = low[i - 1] if i > 0 else " "
        after = low[i + len(n)] if i + len(n) < len(low) else " "
        edge = _is_latin_word_char if latin else str.isalnum
        if not edge(before) and not edge(after):
            return i
        start = i + 1
    return -1


def _replace_variants(text: str, src: str, targets: list[str], spaces: bool, low: str | None = None) -> list[str]:
    i = find_word(text, src, spaces, low)
    if i < 0:
        return []
    # In scripts without spaces, a word in another script is typed with spaces around it ("รองเท้า running").
    pad = (lambda t: f" {t} ") if not spaces else (lambda t: t)
    return [" ".join((text[:i] + (pad(t) if _script_differs(t, src) else t) + text[i + len(src):]).split())
            for t in targets if t.lower() != src.lower()]


def _script_differs(a: str, b: str) -> bool:
    latin = lambda s: any(c.isalpha() and ord(c) < 0x250 for c in s)  # noqa: E731
    return latin(a) != latin(b)


def strip_variants(text: str, rule) -> list[str]:
    decomposed = unicodedata.normalize("NFD", text)
    out = "".join(ch for ch in decomposed
                  if ch not in rule.drop and not (rule.all_marks and unicodedata.category(ch) == "Mn"))
    out = "".join(rule.map.get(ch, ch) for ch in out)
    out = unicodedata.normalize("NFC", out)
    return [out] if out != unicodedata.normalize("NFC", text) else []


def word_order_variants(parts: list[str]) -> list[list[str]]:
    """Reorderings of the query's parts (brand, model, noun, attribute value: a part keeps its inner word order,
    so "nồi chiên không dầu" never splits): neighbouring parts swapped, or the first or last part moved to the
    other end."""
    if len(parts) < 2:
        return []
    out = []
    for i in range(len(parts) - 1):
        t = parts[:]
        t[i], t[i + 1] = t[i + 1], t[i]
        out.append(t)
    out += [parts[1:] + parts[:1], parts[-1:] + parts[:-1]]
    seen, uniq = {" ".join(parts)}, []
    for v in out:
        if " ".join(v) not in seen:
            seen.add(" ".join(v))
            uniq.append(v)
    return uniq


def casefold_variants(text: str) -> list[str]:
    return [text.lower()] if text.lower() != text else []


def punctuation_variants(text: str, rule) -> list[str]:
    out = "".join("" if ch in rule.drop else " " if ch in rule.space else ch for ch in text)
    out = " ".join(out.split())
    return [out] if out != text else []


# ---- units -------------------------------------------------------------------------------------------------
_NUM = r"(\d+(?:[.,]\d+)?)"


def _fmt(v: float) -> str | None:
    """A converted value as shoppers write it, or None: "0.9 kg" yes, "0.04 liter" and "333.33 g" no."""
    if v < 0.5 or v >= 100000:
        return None
    r = round(v, 2)
    if abs(r - v) > 1e-9:
        return None  # 333.333 g is not what anyone types
    return str(int(r)) if r == int(r) else f"{r:g}"


def unit_variants(text: str, group) -> list[str]:
    """Respell, respace, or convert the first number+unit of this group ("1kg" -> "1 kg", "1000g", "1 กก.")."""
    spell = sorted(((a, u) for u, als in group.aliases.items() for a in als), key=lambda x: -len(x[0]))
    alt = "|".join(re.escape(a) for a, _ in spell)
    m = re.search(rf"(?<![\w.]){_NUM}(\s?)({alt})(?![^\W\d_])", text, flags=re.IGNORECASE)
    if not m:
        return []
    num, alias = m.group(1), m.group(3)
    unit = next(u for a, u in spell if a.lower() == alias.lower())
    value = float(num.replace(",", "."))
    outs = []
    for u2, als in group.aliases.items():
        if u2 == unit:
            v2 = num
        elif u2 in group.factors and unit in group.factors:
            v2 = _fmt(value * group.factors[unit] / group.factors[u2])
            if v2 is None:
                continue
        else:
            continue
        for a in als[:3]:
            for sp in ("", " "):
                outs.append(text[:m.start()] + f"{v2}{sp}{a}" + text[m.end():])
    return list(dict.fromkeys(o for o in outs if o != text))


# ---- typos -------------------------------------------------------------------------------------------------
def neighbours(rows: list[str]) -> dict[str, str]:
    """Key -> its neighbours: left/right on its row; on staggered rows the keys at index i-1, i below and i, i+1
    above (each row sits about half a key right of the one above)."""
    nb: dict[str, str] = {}
    for r, row in enumerate(rows):
        for i, ch in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            if r + 1 < len(rows):
                near += [rows[r + 1][j] for j in (i - 1, i) if 0 <= j < len(rows[r + 1])]
            if r > 0:
                near += [rows[r - 1][j] for j in (i, i + 1) if 0 <= j < len(rows[r - 1])]
            nb[ch] = "".join(dict.fromkeys(near))
    return nb


# Khmer coeng and Myanmar virama stack the next consonant under the previous one: a letter next to one is half of a
# cluster, and dropping or doubling it leaves a sequence no keyboard produces.
_JOINERS = {"\u17d2", "\u1039"}
# Thai and Lao vowels written after a consonant but encoded as letters: no word starts with them.
_NO_START = set("ะาำๅະາຳ")


# A neighbour typo keeps the cluster well formed: a key is replaced only by a neighbouring key of the same class (a
# consonant by a consonant, an above-vowel by an above-vowel, a Khmer dependent vowel by another), so no syllable
# gets a vowel sign with no consonant, or two signs in one slot. Classes follow where the sign sits in the cluster.
# A letter of another script (Latin, Vietnamese, ...) is class "letter"; the rest (digits, joiners, asat, ๆ, ...) is
# never replaced.
_KEY_CLASSES = {
    "th.consonant": "\u0e01-\u0e2e", "th.lead": "\u0e40-\u0e44", "th.follow": "\u0e30\u0e32\u0e33\u0e45",
    "th.above": "\u0e31\u0e34-\u0e37\u0e47", "th.below": "\u0e38\u0e39", "th.tone": "\u0e48-\u0e4b",
    "lo.consonant": "\u0e81-\u0eae\u0edc-\u0edf", "lo.lead": "\u0ec0-\u0ec4", "lo.follow": "\u0eb0\u0eb2\u0eb3",
    "lo.above": "\u0eb1\u0eb4-\u0eb7\u0ebb\u0ecd", "lo.below": "\u0eb8\u0eb9", "lo.tone": "\u0ec8-\u0ecb",
    "km.consonant": "\u1780-\u17a2", "km.independent": "\u17a3-\u17b3", "km.vowel": "\u17b6-\u17c5",
    "km.final": "\u17c6-\u17c8", "km.above": "\u17c9-\u17d1\u17dd",
    "my.consonant": "\u1000-\u1021", "my.independent": "\u1023-\u102a", "my.after": "\u102b\u102c",
    "my.above": "\u102d\u102e\u1032", "my.below": "\u102f\u1030", "my.medial": "\u103b\u103c",
}
_KEY_CLASS = {ch: name for name, spec in _KEY_CLASSES.items()
              for a, b in re.findall(r"(.)(?:-(.))?", spec) for ch in map(chr, range(ord(a), ord(b or a) + 1))}


def key_class(ch: str) -> str | None:
    """The class a neighbour typo must keep (see _KEY_CLASSES); None: never a typo target."""
    if c := _KEY_CLASS.get(ch):
        return c
    return "letter" if ch.isalpha() and not ("\u0e00" <= ch <= "\u0eff" or "\u1000" <= ch <= "\u109f"
                                            or "\u1780" <= ch <= "\u17ff") else None


def _typo_positions(text: str, marks: bool = False) -> list[int]:
    """Letters inside words of 3+ characters (digits are model numbers: a typo there makes another product), not
    next to a cluster joiner; with `marks`, vowel signs and tone marks too (a neighbour typo swaps them in place)."""
    pos = []
    for m in re.finditer(r"\S+", text):
        w = m.group()
        if len(w) >= 3:
            pos += [m.start() + i for i, ch in enumerate(w) if (ch.isalpha() or (marks and key_class(ch)))
                    and (i == 0 or w[i - 1] not in _JOINERS) and (i + 1 == len(w) or w[i + 1] not in _JOINERS)]
    return pos


def typo_variants(text: str, kind: str, nb: dict[str, str]) -> list[str]:
    out = []
    for i in _typo_positions(text, marks=kind == "neighbour"):
        ch = text[i]
        if kind == "drop":
            # a letter carrying a vowel sign or tone mark: dropping it would hang the mark on the previous letter
            # (or on nothing), which is not a typo but an invalid string
            nxt = text[i + 1] if i + 1 < len(text) else " "
            if unicodedata.category(nxt).startswith("M") or (nxt in _NO_START and (i == 0 or text[i - 1] == " ")):
                continue
            out.append(text[:i] + text[i + 1:])
        elif kind == "double":
            out.append(text[:i] + ch + text[i:])
        elif kc := key_class(ch):
            for n in nb.get(ch.lower(), ""):
                if key_class(n) == kc:
                    out.append(text[:i] + (n.upper() if ch.isupper() else n) + text[i + 1:])
    return list(dict.fromkeys(o for o in out if o != text))


# ---- the generator -----------------------------------------------------------------------------------------
@dataclass
class Query:
    text: str
    base: str
    steps: list[Step] = field(default_factory=list)  # {"family", "rule", "from", "to"} per rule applied
    parts: list[str] = field(default_factory=list)   # the base query's parts (brand, noun, attribute value, ...)


class Shopper:
    """Applies one language's merged rules. Deterministic: the caller passes the RNG (seeded from seed + product)."""

    def __init__(self, lang: str, rules_dir=None):
        self.lang = lang
        self.rules, self.hash = load_rules(lang, rules_dir)
        r = self.rules
        self.rates = r.rates
        self.spaces = True if r.spaces is None else r.spaces
        self.nb: dict[str, str] = {}
        for kb in (r.typos.keyboards if r.typos else []):
            for k, v in neighbours(kb.rows).items():
                self.nb[k] = "".join(dict.fromkeys(self.nb.get(k, "") + v))
        self.brand_pairs = [(b.latin, b.local) for b in (r.brands.table if r.brands else [])]

    # each family: (family, rule id, variants) for the given text
    def brand_variants(self, text: str) -> list[tuple[str, list[str]]]:
        out, low = [], text.lower()
        for latin, local in self.brand_pairs:
            # `in` first: most of a table's entries are absent from a query, and the check is cheap
            v = _replace_variants(text, latin, local, self.spaces, low) if _needle(latin)[0] in low else None
            if v:
                out.append((f"{self.lang}.brands.{latin}", v))
            for spelling in local:
                if _needle(spelling)[0] not in low:
                    continue
                v = _replace_variants(text, spelling, [latin], self.spaces, low)
                if v:
                    out.append((f"{self.lang}.brands.{latin}", v))
        return out

    def _step(self, q: Query, family: str, rule: str, new: str) -> None:
        q.steps.append({"family": family, "rule": rule, "from": q.text, "to": new})
        q.text = new

    def transform(self, parts: list[str], rng: random.Random) -> Query:
        """Apply the rules to a base query given as its parts (see word_order_variants)."""
        parts = [" ".join(p.split()) for p in parts if p and p.strip()]
        base = " ".join(parts)
        q, rt, r = Query(base, base, parts=parts), self.rates, self.rules
        if rt.word_order and r.word_order and (vs := word_order_variants(parts)) and rng.random() < rt.word_order:
            self._step(q, "word_order", "word_order", " ".join(rng.choice(vs)))
        if rt.units and rng.random() < rt.units:
            cands = [(g.id, v) for g in r.units if (v := unit_variants(q.text, g))]
            if cands:
                gid, vs = rng.choice(cands)
                self._step(q, "units", f"units.{gid}", rng.choice(vs))
        for fam, table, rate in (("abbreviations", r.abbreviations, rt.abbreviations),
                                 ("code_switch", r.code_switch, rt.code_switch)):
            low = q.text.lower()
            for e in table:
                if _needle(e.src)[0] not in low:   # absent: no variants, and no draw from rng
                    continue
                if (vs := _replace_variants(q.text, e.src, e.to, self.spaces, low)) and rng.random() < (rate or 0):
                    self._step(q, fam, f"{self.lang}.{fam}.{e.src}", rng.choice(vs))
                    low = q.text.lower()
        if rt.brands and (bv := self.brand_variants(q.text)) and rng.random() < rt.brands:
            rule, vs = rng.choice(bv)
            self._step(q, "brands", rule, rng.choice(vs))
        if rt.casefold and (vs := casefold_variants(q.text)) and rng.random() < rt.casefold:
            self._step(q, "casefold", "casefold", vs[0])
        if r.punctuation and rt.punctuation and (vs := punctuation_variants(q.text, r.punctuation)) \
                and rng.random() < rt.punctuation:
            self._step(q, "punctuation", "punctuation", vs[0])
        for sm in r.strip_marks:
            if (vs := strip_variants(q.text, sm)) and rng.random() < sm.rate:
                self._step(q, "strip_marks", f"{self.lang}.strip_marks.{sm.id}", vs[0])
                break  # one way of dropping marks per query
        if rt.typo and rng.random() < rt.typo:
            kinds = [("neighbour", rt.typo_neighbour or 0), ("drop", rt.typo_drop or 0),
                     ("double", rt.typo_double or 0)]
            kind = rng.choices([k for k, _ in kinds], weights=[w for _, w in kinds])[0]
            if vs := typo_variants(q.text, kind, self.nb):
                self._step(q, "typo", f"typo.{kind}", rng.choice(vs))
        return q

    # ---- base queries ----------------------------------------------------------------------------------
    def item_base(self, row: dict, attrs: dict, rng: random.Random) -> tuple[str, list[str]] | None:
        """(pattern, parts) naming the item: brand/model plus the leaf category noun or an attribute value."""
        fields = {"brand": str(attrs.get("brand") or "").strip(), "model": str(attrs.get("model") or "").strip(),
                  "noun": leaf_words(row["category"], rng), "attr": _attr_values(attrs, self.rules, rng, 1)}
        if not self.rules.item_query:
            return None
        usable = [p for p in self.rules.item_query.patterns
                  if all(fields.get(f) for f in re.findall(r"{(\w+)}", p))]
        if not usable:
            return None
        pattern = rng.choice(usable)
        return pattern, [fields[f] for f in re.findall(r"{(\w+)}", pattern)]

    def category_base(self, row: dict, attrs: dict, rng: random.Random) -> list[str]:
        """[leaf category words, 0-2 attribute values]."""
        cq = self.rules.category_query
        k = rng.randint(0, cq.max_attributes if cq and cq.max_attributes is not None else 2)
        values = _attr_values(attrs, self.rules, rng, k)
        return [leaf_words(row["category"], rng)] + (values.split("\x1f") if values else [])


def leaf_words(category: str, rng: random.Random) -> str:
    """The leaf segment of a category path; of a pair ("Sandals & Slides"), one side, as a shopper names one."""
    leaf = category.split(" > ")[-1].strip()
    sides = [s.strip() for s in re.split(r"\s+(?:&|and|và|dan|at|နှင့်|និង|ແລະ|และ)\s+", leaf) if s.strip()]
    return rng.choice(sides) if len(sides) > 1 else leaf


def format_attribute(rules: RuleFile, key: str, value) -> str:
    """An attribute value as category queries write it ("size 42")."""
    cq = rules.category_query
    return (cq.attribute_format if cq else {}).get(key, "{v}").format(v=value)


def _attr_values(attrs: dict, rules: RuleFile, rng: random.Random, k: int) -> str:
    """k attribute values, formatted ("size 42"), joined by \\x1f; '' when k == 0 or there are none."""
    cq = rules.category_query
    keys = cq.attribute_keys if cq and cq.attribute_keys else [x for x in sorted(attrs) if x not in ("brand", "model")]
    vals = [(key, str(attrs[key])) for key in keys if key in attrs and isinstance(attrs[key], (str, int, float))
            and str(attrs[key]).strip()]
    if not vals or k <= 0:
        return ""
    picked = rng.sample(vals, k=min(k, len(vals)))
    return "\x1f".join(format_attribute(rules, key, v) for key, v in picked)
