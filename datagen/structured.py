"""The structured route: training pairs built from product fields, no LLM.

Runs anywhere (no GPU), so the demo uses it. Tasks and their class ids (the equivalence class of valid
positives, which CAM masks on and mining refuses on; declared once, in compass/tasks.py):

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
from pathlib import Path
from typing import Optional

import duckdb
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from compass.catalog.ingest_versions import revive_reproduced
from compass.datagen.shopper import Shopper
from compass.errors import CompassError
from compass.ids import content_id
from compass.registry import stages
from compass.stage import Selection, Stage
from compass.tasks import LEGACY_STRUCTURED_TASKS as LEGACY_TASKS
from compass.tasks import STRUCTURED_TASKS as TASKS
from compass.tasks import category_class, item_class  # noqa: F401  (re-exported: the rules live in compass.tasks)

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


def _attrs(row: dict) -> dict:
    attrs = row.get("attributes")
    return json.loads(attrs) if isinstance(attrs, str) else (attrs or {})


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
    vals = [str(v) for k, v in sorted(attrs.items())
            if k not in ("brand", "model") and isinstance(v, (str, int, float))]
    if not vals:
        return None
    picked = rng.sample(vals, k=min(len(vals), rng.randint(1, 2)))
    parts = ([str(attrs["brand"])] if attrs.get("brand") else []) + picked
    return " ".join(parts) if len(parts) >= 2 else None


class StructuredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: Optional[list[str]] = Field(None, description="Structured tasks (default: all; the legacy four "
                                                         "with shopper=False).")
    seed: int = Field(0, description="Seed for every random choice.")
    shopper: bool = Field(True, description="Shopper-style queries (rules in datagen/rules); --no-shopper keeps "
                                            "2-4 title words (ablations).")
    rules_dir: Optional[str] = Field(None, description="A shopper rules folder (generic.yaml + <lang>.yaml) "
                                                       "instead of the bundled one.")
    limit: Optional[int] = Field(None, description="At most the first N products (by id) of the languages.")

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        # CompassError passes through pydantic (it is no ValueError): one line naming the flag and the fix.
        bad = [t for t in v or [] if t not in TASKS]
        if bad:
            raise CompassError(f"--tasks {bad[0]!r} is not a structured task: use any of {', '.join(TASKS)}")
        return v or None

    @field_validator("limit")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise CompassError("--n must be at least 1")
        return v


def rules_digest(rules_dir: str | None) -> str | None:
    """A hash of the rule files (*.yaml) of a rules folder (None when it does not exist: setup() says so)."""
    from compass.datagen.shopper_rules import RULES_DIR
    from compass.ids import content_id

    folder = Path(rules_dir) if rules_dir else RULES_DIR
    if not folder.is_dir():
        return None
    return content_id("rules", *[(f.name, f.read_text(encoding="utf-8")) for f in sorted(folder.glob("*.yaml"))])


# Products whose current version was processed with these params: the stage's own record (migration 0100), so a
# product that yields no pair is not selected again, and an edited product (a new row in product_versions) is.
_PENDING = """
WITH versions AS (SELECT product_id, count(*) AS n FROM product_versions GROUP BY product_id),
cand AS (
    SELECT p.id, p.lang, p.market, p.title, p.category, p.attributes, p.description,
           coalesce(p.content_hash, '') AS content_hash, coalesce(v.n, 0)::INTEGER AS version
    FROM products p LEFT JOIN versions v ON v.product_id = p.id {where} ORDER BY p.id {limit})
{head} FROM cand c WHERE NOT EXISTS (SELECT 1 FROM structured_products d WHERE d.product_id = c.id
    AND d.version = c.version AND d.params_hash = ?) {order}"""


@stages.register
class StructuredPairs(Stage):
    """products in -> examples out (structured route), with shopper-query lineage (`example_transforms`) and the
    record of which product versions were processed with these params (`structured_products`)."""

    name = "structured"
    Config = StructuredConfig
    writes = {"examples": ("id",), "example_transforms": ("example_id",),
              "structured_products": ("product_id", "version", "params_hash")}
    batch_size = 5000   # products per transaction (about 25k examples): one anti-join of each table per commit
    unit = "products"
    volatile = frozenset({"rules_dir"})  # where the rules are does not matter; what they say does (params)

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        self.tasks = tuple(c.tasks) if c.tasks else (TASKS if c.shopper else LEGACY_TASKS)
        self.seed, self.shopper, self.rules_dir = c.seed, c.shopper, c.rules_dir
        self._shoppers: dict[str, Shopper] = {}
        self._langs: list[str] = []
        self._langs_asked: list[str] = []  # from select(): the languages whose shopper rules setup() loads
        self._rules: str | None | bool = False  # rules_digest, once per stage

    def params(self) -> dict:
        # The default task list spelt out, and the rule files' content: an edited rule is processed again.
        if self._rules is False:
            self._rules = rules_digest(self.rules_dir) if self.shopper else None
        return {**super().params(), "tasks": list(self.tasks), "rules": self._rules}

    def select(self, langs: list[str] | None = None) -> Selection:
        self._langs_asked = list(langs or [])
        where, params = "", []
        if langs:
            where, params = f"WHERE p.lang IN ({', '.join('?' * len(langs))})", list(langs)
        limit = ""
        if self.config.limit:
            limit, params = "LIMIT ?", params + [int(self.config.limit)]
        params.append(self.params_hash)
        fmt = dict(where=where, limit=limit)
        return Selection(_PENDING.format(head="SELECT c.*", order="ORDER BY c.id", **fmt), params,
                         _PENDING.format(head="SELECT count(*)", order="", **fmt))

    def prepare(self, cat) -> None:
        where = ""
        if self._langs_asked:
            where = f"WHERE lang IN ({', '.join('?' * len(self._langs_asked))})"
        self._langs = [r[0] for r in cat.con.execute(f"SELECT DISTINCT lang FROM products {where} ORDER BY 1",
                                                     self._langs_asked).fetchall()]

    def setup(self) -> None:
        """Validate the rule files and load the rules of the languages to process, so that a malformed file stops
        the run before the first batch, and a missing one is warned about before the progress bar starts."""
        if self.shopper:
            from compass.datagen.shopper_rules import check_rules

            check_rules(self.rules_dir)
            for lang in self._langs:
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

    def pairs_frame(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The examples of a batch of products, with their lineage JSON in a `transforms` column."""
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

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        frame = self.pairs_frame(batch)
        lin = frame.filter(pl.col("transforms").is_not_null())
        parsed = [json.loads(t) for t in lin["transforms"].to_list()]
        side = pl.DataFrame({
            "example_id": lin["id"], "kind": [p["kind"] for p in parsed], "pattern": [p["pattern"] for p in parsed],
            "base": [p["base"] for p in parsed], "rules_hash": [p["rules_hash"] for p in parsed],
            "steps": [json.dumps(p["steps"], ensure_ascii=False) for p in parsed], "run_id": lin["run_id"],
        }, schema=TRANSFORM_SCHEMA)
        done = batch.select(pl.col("id").alias("product_id"), "version", "content_hash") if "version" in batch.columns \
            else pl.DataFrame(schema={"product_id": pl.Utf8, "version": pl.Int32, "content_hash": pl.Utf8})
        n = frame.group_by("product_id").len(name="examples")
        done = done.join(n, on="product_id", how="left").with_columns(
            pl.col("examples").fill_null(0).cast(pl.Int32), pl.lit(self.params_hash).alias("params_hash"),
            pl.lit(self.run_id, dtype=pl.Utf8).alias("run_id"))
        return {"examples": frame.select(list(EXAMPLE_SCHEMA)), "example_transforms": side,
                "structured_products": done}

    def write(self, con: duckdb.DuckDBPyConnection, outputs: dict[str, pl.DataFrame]) -> dict[str, int]:
        added = super().write(con, outputs)
        # Built from the current product version, new or already stored: not superseded (same transaction).
        revive_reproduced(con, outputs["examples"]["id"].to_list())
        return added

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict:
        return {"products": outputs["structured_products"].height}


EXAMPLE_SCHEMA = {
    "id": pl.Utf8, "route": pl.Utf8, "lang": pl.Utf8, "market": pl.Utf8, "task": pl.Utf8, "persona": pl.Utf8,
    "anchor": pl.Utf8, "positive": pl.Utf8, "class_id": pl.Utf8, "product_id": pl.Utf8, "run_id": pl.Utf8,
}
STAGE_SCHEMA = {**EXAMPLE_SCHEMA, "transforms": pl.Utf8}
TRANSFORM_SCHEMA = {"example_id": pl.Utf8, "kind": pl.Utf8, "pattern": pl.Utf8, "base": pl.Utf8,
                    "rules_hash": pl.Utf8, "steps": pl.Utf8, "run_id": pl.Utf8}
