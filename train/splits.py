"""Held-out splits by group: no product, item or translation group ever straddles train / dev / test.

The group of an example (GROUPING = "product-v2"):

1. the product it comes from, found through ``product_id``, else through its source example (translations), else
   through any example of its translation group, and lifted to the *item* when the product names a brand + model
   (``compass.tasks.item_class``): two sellers' listings of one item are valid positives of each other's queries,
   so they go to the same side. The split's item key leaves the language out (``item:*:<brand>|<model>``): the same
   phone listed in Thai and in Vietnamese is one item, and with a key per language ("product-v1", the grouping of
   catalogs split before) the Vietnamese listing could train while the Thai one was tested. On the demo catalog
   158 of 169 held-out products had their brand + model in another language's training data that way. A catalog
   keeps the grouping it was split with; `compass split --reset` moves it to the current one;
2. else its translation group (an example with no product);
3. else its class id; else the example itself.

Why the product and not the class id: for title2category the class is the *category*, shared by many products.
Grouping by it would move whole categories to test, so the model would never train on them and the test would
measure categories it cannot know. Grouping by product keeps every category on both sides while no title is ever
seen in training and tested. A translation group always sits inside one product (its source example has one), so
rule 1 keeps translations with their source; rule 2 only covers examples that carry no product at all.

The side is a pure function of (seed, group): ``u = sha256(seed, group) / 2**64``, test if u < test, dev if
u < test + dev, else train. An example that arrives later gets its split by the same rule, and lands with its group.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import polars as pl
from pydantic import BaseModel, ConfigDict

from compass.catalog.db import Catalog, Run, duckdb_memory
from compass.errors import CompassError
from compass.ids import params_hash
from compass.registry import stages
from compass.runner import execute
from compass.stage import Selection, Stage
from compass.tasks import item_class

GROUPING = "product-v2"
GROUPINGS = ("product-v1", "product-v2")  # v1: item key per language (catalogs split before v2 keep it)
SPLITS = ("train", "dev", "test")


class SplitConfig(BaseModel):
    """The split stage's parameters (a SplitPolicy as a pydantic config)."""

    model_config = ConfigDict(extra="forbid")
    test: float = 0.05
    dev: float = 0.05
    seed: int = 0
    grouping: str = GROUPING


@dataclass(frozen=True)
class SplitPolicy:
    test: float = 0.05
    dev: float = 0.05
    seed: int = 0
    grouping: str = GROUPING

    def __post_init__(self) -> None:
        if not (0 <= self.test < 1 and 0 <= self.dev < 1 and self.test + self.dev < 1):
            raise CompassError(f"split fractions test={self.test} dev={self.dev}: each must be in [0, 1) and their "
                               "sum below 1 (e.g. --test 0.05 --dev 0.05)")
        if self.grouping not in GROUPINGS:
            raise CompassError(f"split grouping {self.grouping!r}: use one of {', '.join(GROUPINGS)}")

    @property
    def hash(self) -> str:
        return params_hash(asdict(self))

    def side(self, group: str) -> str:
        """train | dev | test for a group id; deterministic from (seed, group) alone."""
        digest = hashlib.sha256(f"{self.seed}\x1f{group}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        return "test" if u < self.test else "dev" if u < self.test + self.dev else "train"


def _item_or_product(pid: str, lang: str | None, attributes, grouping: str = GROUPING) -> str:
    group = item_class({"id": pid, "lang": lang, "attributes": attributes})  # the one rule: compass/tasks.py
    if grouping != "product-v1" and group.startswith("item:"):
        return "item:*:" + group.split(":", 2)[2]  # one item across languages and markets (see the docstring)
    return group


def group_of(row: dict, grouping: str = GROUPING) -> str:
    """Group id of one example row with keys id, class_id, translation_group, pid, p_lang, p_attributes."""
    if row.get("pid"):
        return _item_or_product(row["pid"], row.get("p_lang"), row.get("p_attributes"), grouping)
    if row.get("translation_group"):
        return f"translation:{row['translation_group']}"
    if row.get("class_id"):
        return f"class:{row['class_id']}"
    return f"example:{row['id']}"


# Pending examples with the product found through the example, its source example or its translation group.
# No ORDER BY: the side is a function of the row alone, so the order changes nothing, and a sort would hold every
# pending row before the first one comes out.
_PENDING_SQL = """
WITH tg AS (
    SELECT translation_group, min(product_id) AS product_id FROM examples
    WHERE translation_group IS NOT NULL AND product_id IS NOT NULL GROUP BY translation_group
)
SELECT e.id, e.class_id, e.translation_group,
       coalesce(e.product_id, s.product_id, tg.product_id) AS pid,
       p.lang AS p_lang, CAST(p.attributes AS VARCHAR) AS p_attributes
FROM examples e
LEFT JOIN examples s ON s.id = e.source_example_id
LEFT JOIN tg ON tg.translation_group = e.translation_group
LEFT JOIN products p ON p.id = coalesce(e.product_id, s.product_id, tg.product_id)
WHERE NOT EXISTS (SELECT 1 FROM splits x WHERE x.example_id = e.id)
"""
# DuckDB's own share while streaming: its hash tables (examples, products, splits) spill to disk above this.
DUCKDB_MEMORY = "1GB"


def _assign(rows: list[dict], policy: SplitPolicy, run_id: str | None) -> pl.DataFrame:
    # Examples of one product share its group: parse its attributes and hash its group once per batch.
    group_memo: dict[tuple, str] = {}
    side_memo: dict[str, str] = {}
    groups, sides = [], []
    for r in rows:
        k = (r["pid"], r["p_lang"], r["p_attributes"]) if r["pid"] else (None, r["translation_group"],
                                                                           r["class_id"], r["id"])
        g = group_memo.get(k)
        if g is None:
            g = group_memo[k] = group_of(r, policy.grouping)
        s = side_memo.get(g)
        if s is None:
            s = side_memo[g] = policy.side(g)
        groups.append(g)
        sides.append(s)
    return pl.DataFrame({
        "example_id": [r["id"] for r in rows], "split": sides, "group_id": groups,
        "policy_hash": [policy.hash] * len(rows), "run_id": [run_id] * len(rows),
    }, schema={"example_id": pl.Utf8, "split": pl.Utf8, "group_id": pl.Utf8, "policy_hash": pl.Utf8,
               "run_id": pl.Utf8})


@stages.register
class Split(Stage):
    """Gives each pending example its side. Shardable: the side is a function of the row alone (its group)."""

    name = "split"
    Config = SplitConfig
    writes = {"splits": ("example_id",), "split_policies": ("policy_hash",)}
    appends = frozenset({"splits"})   # pending: examples without a split row (one row each: products' ids are unique)
    batch_size = 20000

    @property
    def policy(self) -> SplitPolicy:
        return SplitPolicy(**self.config.model_dump())

    def select(self, langs: list[str] | None = None) -> Selection:
        return Selection(_PENDING_SQL)  # every language: a group spans languages through translations

    def prepare(self, cat: Catalog) -> None:
        active = active_policy(cat)
        if active is not None and active != self.policy:
            raise CompassError(f"the catalog's splits were made with test={active.test} dev={active.dev} "
                               f"seed={active.seed} grouping={active.grouping}: run the split stage with the same "
                               "values, or `compass split --reset` to redo every split")

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        p = self.policy
        return {"splits": _assign(batch.to_dicts(), p, self.run_id),
                # the policy row (one per catalog, idempotent): later examples are split by the same rule
                "split_policies": pl.DataFrame([{"policy_hash": p.hash, "test": p.test, "dev": p.dev, "seed": p.seed,
                                                 "grouping": p.grouping, "run_id": self.run_id}],
                                               schema_overrides={"run_id": pl.Utf8})}

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict:
        return {s: int(n) for s, n in outputs["splits"].group_by("split").len().iter_rows()}


def active_policy(cat: Catalog) -> SplitPolicy | None:
    """The policy the catalog's splits were made with (None before the first `compass split`)."""
    rows = cat.query("SELECT test, dev, seed, grouping FROM split_policies ORDER BY created_at DESC LIMIT 1")
    return SplitPolicy(**rows[0]) if rows else None


def assign_splits(cat: Catalog, policy: SplitPolicy | None = None, run_id: str | None = None,
                  reset: bool = False, batch_size: int = 20000) -> dict:
    """Give every unsplit example its side; returns counts. Idempotent: a rerun adds only new examples.

    With ``policy=None`` the catalog's active policy is used (or the default one for a fresh catalog). A policy
    different from the active one is refused unless ``reset``, which drops the stored splits and redoes them all
    (models trained before then were trained on the old train side: their cards say which policy).
    """
    active = active_policy(cat)
    policy = policy or active or SplitPolicy()
    if active is not None and active != policy and not reset:
        raise CompassError(
            f"the catalog's splits were made with test={active.test} dev={active.dev} seed={active.seed} "
            f"grouping={active.grouping}; asked for test={policy.test} dev={policy.dev} seed={policy.seed} "
            f"grouping={policy.grouping}: pass the same values, or --reset "
            "to redo every split (models trained before keep their old split in their cards)")
    if reset or active is None:
        with cat.transaction() as con:
            if reset:
                con.execute("DELETE FROM splits")
                con.execute("DELETE FROM split_policies")
            con.execute("INSERT INTO split_policies (policy_hash, test, dev, seed, grouping, run_id) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        [policy.hash, policy.test, policy.dev, policy.seed, policy.grouping, run_id])
    stage = Split(SplitConfig(**asdict(policy)))
    stage.batch_size = batch_size
    # Streamed by the runner: Python holds one batch, DuckDB at most DUCKDB_MEMORY, whatever the catalog's size.
    with duckdb_memory(cat, DUCKDB_MEMORY):
        summary = execute(cat, stage, Run(run_id, "split", {}) if run_id else None, progress=False)
    added = summary.written.get("splits", 0)
    counts = {r["split"]: r["n"] for r in cat.query("SELECT split, count(*) AS n FROM splits GROUP BY split")}
    return {"added": added, "policy": asdict(policy), "policy_hash": policy.hash,
            **{s: int(counts.get(s, 0)) for s in SPLITS}}


def split_sizes(cat: Catalog) -> list[dict]:
    """Kept examples per language and split (unsplit ones counted apart)."""
    return cat.query("""
        SELECT k.lang,
               count(*) FILTER (WHERE s.split = 'train') AS train,
               count(*) FILTER (WHERE s.split = 'dev') AS dev,
               count(*) FILTER (WHERE s.split = 'test') AS test,
               count(*) FILTER (WHERE s.split IS NULL) AS unsplit,
               count(DISTINCT s.group_id) AS groups
        FROM kept_examples k LEFT JOIN splits s ON s.example_id = k.id
        GROUP BY k.lang ORDER BY k.lang""")
