"""The structured route: training pairs built from product fields, no LLM.

Runs anywhere (no GPU), so the demo uses it. Tasks and their class ids (the equivalence class of valid
positives, which CAM masks on and mining refuses on):

| task                 | anchor                                      | positive      | class id                      |
|----------------------|---------------------------------------------|---------------|-------------------------------|
| query2title          | shopper-style item query (brand/model/noun) | title         | item (brand+model) or product |
| category_query2title | shopper-style leaf category + 0-2 values    | title         | category path in its lang     |
| title2category       | title                                       | category path | category path in its lang     |
| attr_query2title     | brand + attribute values                    | title         | item or product               |
| desc2title           | description                                 | title         | item or product               |

"Item" = the same brand and model from attributes: two sellers' listings of one item are valid positives of
each other's queries, so they share a class and are never used as each other's negatives. A category query is
answered by every product of its category, so its class is the category: CAM masks, and mining refuses, the other
products of the category.

Shopper-style queries (`compass.datagen.shopper`, rules in `datagen/rules/*.yaml`) replace the old 2-4
consecutive title words, which every model solves by word overlap; `shopper=False` keeps the old fragments (for
ablations). Each shopper query's lineage (base query + rules applied) goes to `example_transforms`.
"""

from __future__ import annotations

import json
import random
import re

import polars as pl

from compass.datagen.shopper import Shopper
from compass.ids import content_id
from compass.stage import Stage

TASKS = ("query2title", "category_query2title", "title2category", "attr_query2title", "desc2title")
LEGACY_TASKS = ("query2title", "title2category", "attr_query2title", "desc2title")  # before shopper queries

# Promo words sellers add to titles; they say nothing a shopper searches for, so queries drop them.
PROMO = {
    "ส่งฟรี", "ของแท้", "แท้", "พร้อมส่ง", "ลดราคา", "โปรโมชั่น", "ราคาถูก", "ขายดี", "ถูกที่สุด", "100%",
    "freeship", "free", "ship", "hàng", "chính", "hãng", "giá", "rẻ", "sale", "hot", "new", "cod", "ready",
    "stock", "murah", "original", "ori", "promo", "diskon", "legit", "authentic", "best", "seller", "bestseller",
    "flash", "official", "store", "กล่อง", "ใหม่", "mới", "baru", "termurah", "viral", "limited", "deal", "sulit",
}
_BRACKETS = re.compile(r"[\[\(【（{][^\]\)】）}]*[\]\)】）}]")
_EMOJI_PUNCT = re.compile(r"[!！★☆⭐🔥✨💯|/\\,;:~\-–—+*#@\"'`]+")


def _tokens(title: str) -> list[str]:
    t = _BRACKETS.sub(" ", title)
    t = _EMOJI_PUNCT.sub(" ", t)
    return [w for w in t.split() if w.lower() not in PROMO and not re.fullmatch(r"\d+%|x\d+", w.lower())]


def category_class(row: dict) -> str:
    """The class of label-type and category-level tasks: the category path in its language."""
    return f"category:{row['lang']}:{row['category']}"


def _attrs(row: dict) -> dict:
    attrs = row.get("attributes")
    return json.loads(attrs) if isinstance(attrs, str) else (attrs or {})


def item_class(row: dict) -> str:
    """Same brand + model -> same item across sellers' listings; otherwise the product itself."""
    attrs = row.get("attributes")
    attrs = json.loads(attrs) if isinstance(attrs, str) else (attrs or {})
    brand, model = str(attrs.get("brand") or "").strip().lower(), str(attrs.get("model") or "").strip().lower()
    if brand and model:
        return f"item:{row['lang']}:{brand}|{model}"
    return f"product:{row['id']}"


def query_fragment(title: str, rng: random.Random) -> str | None:
    """A short query a shopper might type: 2-4 consecutive content words of the title, promo words dropped."""
    toks = _tokens(title)
    if len(toks) < 2:
        return None
    n = min(len(toks), rng.randint(2, 4))
    start = rng.randint(0, len(toks) - n)
    q = " ".join(toks[start:start + n])
    return q if q != title else None


def attr_query(row: dict, rng: random.Random) -> str | None:
    """Brand plus one or two attribute values, as attribute-driven searches look ("Nike black 42")."""
    attrs = row.get("attributes")
    attrs = json.loads(attrs) if isinstance(attrs, str) else (attrs or {})
    vals = [str(v) for k, v in sorted(attrs.items()) if k not in ("brand", "model") and isinstance(v, (str, int, float))]
    if not vals:
        return None
    picked = rng.sample(vals, k=min(len(vals), rng.randint(1, 2)))
    parts = ([str(attrs["brand"])] if attrs.get("brand") else []) + picked
    return " ".join(parts) if len(parts) >= 2 else None


class StructuredPairs(Stage):
    """products in -> examples out (structured route); rows carry a `transforms` lineage column for shopper
    queries, which the writer stores in `example_transforms`."""

    name = "structured"

    def __init__(self, tasks: tuple[str, ...] | None = None, seed: int = 0, run_id: str | None = None,
                 shopper: bool = True, rules_dir: str | None = None):
        self.tasks = tuple(tasks) if tasks else (TASKS if shopper else LEGACY_TASKS)
        self.seed, self.run_id, self.shopper, self.rules_dir = seed, run_id, shopper, rules_dir
        self._shoppers: dict[str, Shopper] = {}

    def params(self) -> dict:
        return {"tasks": list(self.tasks), "seed": self.seed, "shopper": self.shopper, "rules_dir": self.rules_dir}

    def setup(self, langs: list[str] | None = None) -> None:
        """Validate the rule files and load the rules of `langs`, so that a malformed file stops the run before the
        first batch, and a missing one is warned about before the progress bar starts."""
        if self.shopper:
            from compass.datagen.shopper_rules import check_rules

            check_rules(self.rules_dir)
            for lang in langs or []:
                self.shopper_for(lang)

    def shopper_for(self, lang: str) -> Shopper:
        if lang not in self._shoppers:  # rules load (and validate) once per language
            self._shoppers[lang] = Shopper(lang, self.rules_dir)
        return self._shoppers[lang]

    def _item_query(self, row: dict, rng: random.Random) -> tuple[str, str | None] | None:
        if not self.shopper:
            q = query_fragment(row["title"], rng)
            return (q, None) if q else None
        sh = self.shopper_for(row["lang"])
        based = sh.item_base(row, _attrs(row), rng)
        if based:
            pattern, parts = based
        else:  # no brand/model: the title fragment, one part per word
            pattern, frag = None, query_fragment(row["title"], rng)
            parts = frag.split() if frag else []
        if not parts:
            return None
        q = sh.transform(parts, rng)
        lineage = {"kind": "item" if pattern else "fragment", "pattern": pattern, "base": q.base,
                   "rules_hash": sh.hash, "steps": q.steps}
        return q.text, json.dumps(lineage, ensure_ascii=False)

    def _category_query(self, row: dict, rng: random.Random) -> tuple[str, str | None] | None:
        sh = self.shopper_for(row["lang"])
        parts = sh.category_base(row, _attrs(row), rng)
        if not any(parts):
            return None
        if not self.shopper:
            return " ".join(parts), None
        q = sh.transform(parts, rng)
        lineage = {"kind": "category", "pattern": None, "base": q.base, "rules_hash": sh.hash, "steps": q.steps}
        return q.text, json.dumps(lineage, ensure_ascii=False)

    def pairs(self, row: dict) -> list[tuple[str, str, str, str, str | None]]:
        """(task, anchor, positive, class id, lineage JSON or None) for one product; deterministic from seed and
        product id (one RNG per task, so adding a task leaves the others' queries unchanged)."""
        item = item_class(row)
        rng = lambda task: random.Random(f"{self.seed}:{row['id']}:{task}")  # noqa: E731
        # The pre-shopper RNG, consumed exactly as before (fragment, then attribute query), so that attr_query2title
        # anchors are the same with and without shopper queries and an ablation changes one thing only.
        legacy = random.Random(f"{self.seed}:{row['id']}")
        fragment_rng = legacy if not self.shopper else rng("query2title")
        if self.shopper and "query2title" in self.tasks:
            query_fragment(row["title"], legacy)
        out = []
        if "query2title" in self.tasks:
            if (q := self._item_query(row, fragment_rng)) and q[0].strip().lower() != row["title"].strip().lower():
                out.append(("query2title", q[0], row["title"], item, q[1]))
        if "category_query2title" in self.tasks and row.get("category"):
            if (q := self._category_query(row, rng("category_query2title"))):
                out.append(("category_query2title", q[0], row["title"], category_class(row), q[1]))
        if "title2category" in self.tasks:
            out.append(("title2category", row["title"], row["category"], category_class(row), None))
        if "attr_query2title" in self.tasks and (q := attr_query(row, legacy)):
            out.append(("attr_query2title", q, row["title"], item, None))
        if "desc2title" in self.tasks and row.get("description") and len(row["description"]) >= 20:
            out.append(("desc2title", row["description"], row["title"], item, None))
        return out

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for row in batch.iter_rows(named=True):
            for task, anchor, positive, cls, lineage in self.pairs(row):
                rows.append({
                    "id": content_id("example", "structured", row["lang"], task, anchor, positive),
                    "route": "structured", "lang": row["lang"], "market": row["market"], "task": task,
                    "persona": None, "anchor": anchor, "positive": positive, "class_id": cls,
                    "product_id": row["id"], "run_id": self.run_id, "transforms": lineage,
                })
        return pl.DataFrame(rows, schema=STAGE_SCHEMA)


EXAMPLE_SCHEMA = {
    "id": pl.Utf8, "route": pl.Utf8, "lang": pl.Utf8, "market": pl.Utf8, "task": pl.Utf8, "persona": pl.Utf8,
    "anchor": pl.Utf8, "positive": pl.Utf8, "class_id": pl.Utf8, "product_id": pl.Utf8, "run_id": pl.Utf8,
}
STAGE_SCHEMA = {**EXAMPLE_SCHEMA, "transforms": pl.Utf8}
