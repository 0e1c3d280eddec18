"""The structured route: training pairs built from product fields, no LLM.

Runs anywhere (no GPU), so the demo uses it. Tasks and their class ids (the equivalence class of valid
positives, which CAM masks on and mining refuses on):

| task                 | anchor                                  | positive        | class id                   |
|----------------------|-----------------------------------------|-----------------|----------------------------|
| query2title          | query-like fragment of the title        | title           | item (brand+model) or product |
| title2category       | title                                   | category path   | category path in its lang  |
| attr_query2title     | brand + attribute values                | title           | item or product            |
| desc2title           | description                             | title           | item or product            |

"Item" = the same brand and model from attributes: two sellers' listings of one item are valid positives of
each other's queries, so they share a class and are never used as each other's negatives.
"""

from __future__ import annotations

import json
import random
import re

import polars as pl

from compass.ids import content_id
from compass.stage import Stage

TASKS = ("query2title", "title2category", "attr_query2title", "desc2title")

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
    """products in -> examples out (structured route)."""

    name = "structured"

    def __init__(self, tasks: tuple[str, ...] = TASKS, seed: int = 0, run_id: str | None = None):
        self.tasks, self.seed, self.run_id = tuple(tasks), seed, run_id

    def params(self) -> dict:
        return {"tasks": list(self.tasks), "seed": self.seed}

    def pairs(self, row: dict) -> list[tuple[str, str, str, str]]:
        """(task, anchor, positive, class id) for one product; deterministic from seed and product id."""
        rng = random.Random(f"{self.seed}:{row['id']}")
        item = item_class(row)
        out = []
        if "query2title" in self.tasks and (q := query_fragment(row["title"], rng)):
            out.append(("query2title", q, row["title"], item))
        if "title2category" in self.tasks:
            out.append(("title2category", row["title"], row["category"], f"category:{row['lang']}:{row['category']}"))
        if "attr_query2title" in self.tasks and (q := attr_query(row, rng)):
            out.append(("attr_query2title", q, row["title"], item))
        if "desc2title" in self.tasks and row.get("description") and len(row["description"]) >= 20:
            out.append(("desc2title", row["description"], row["title"], item))
        return out

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        rows = []
        for row in batch.iter_rows(named=True):
            for task, anchor, positive, cls in self.pairs(row):
                rows.append({
                    "id": content_id("example", "structured", row["lang"], task, anchor, positive),
                    "route": "structured", "lang": row["lang"], "market": row["market"], "task": task,
                    "persona": None, "anchor": anchor, "positive": positive, "class_id": cls,
                    "product_id": row["id"], "run_id": self.run_id,
                })
        return pl.DataFrame(rows, schema=EXAMPLE_SCHEMA)


EXAMPLE_SCHEMA = {
    "id": pl.Utf8, "route": pl.Utf8, "lang": pl.Utf8, "market": pl.Utf8, "task": pl.Utf8, "persona": pl.Utf8,
    "anchor": pl.Utf8, "positive": pl.Utf8, "class_id": pl.Utf8, "product_id": pl.Utf8, "run_id": pl.Utf8,
}
