"""The filter contract: examples in, decisions out; the base class owns the loop.

A filter is a `Filter` subclass with one method, `judge(example) -> (keep, reason, score)`, or
`judge_batch(frame) -> list of verdicts` when it is faster to look at a whole batch (one model call, one
vectorised pass). The base class turns verdicts into decision rows (stage, keep, reason, score, params hash,
enforced, run id); `run_filter` selects the pending examples, drives the filter over them batch by batch
(one transaction per batch: a killed run keeps complete batches) and records what it did.

Pending for a stage = examples with no decision of that stage that no *other* stage has rejected (enforced).
So each stage sees what the stages before it kept, the funnel is exact, and a rerun judges nothing twice.
"""

from __future__ import annotations

from typing import Any, ClassVar

import duckdb
import polars as pl

from compass.catalog.db import Catalog
from compass.stage import Stage, drive, insert_frame

Verdict = tuple[bool, str, "float | None"]
OK: Verdict = (True, "ok", None)

# The order stages run in and the funnel shows them.
STAGE_ORDER = ("langid", "quality", "dedup", "leakage")

DECISION_SCHEMA = {
    "example_id": pl.Utf8, "stage": pl.Utf8, "keep": pl.Boolean, "reason": pl.Utf8, "score": pl.Float64,
    "params_hash": pl.Utf8, "enforced": pl.Boolean, "run_id": pl.Utf8,
}
EXAMPLE_COLUMNS = "id, route, lang, market, task, persona, anchor, positive, class_id, created_at"


class Filter(Stage):
    """Subclasses set `name` and implement `judge` (one example as a dict) or `judge_batch` (a frame)."""

    name: ClassVar[str] = "filter"
    batch_size: ClassVar[int] = 2000

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.enforced = True
        self._extra: list[tuple[str, pl.DataFrame, list[str]]] = []

    def judge(self, example: dict) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} implements neither judge nor judge_batch")

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        return [self.judge(row) for row in batch.iter_rows(named=True)]

    def prepare(self, cat: Catalog, pending: pl.DataFrame) -> None:
        """Read whatever catalog state the filter needs (an index of earlier examples) before the first batch."""

    def emit(self, table: str, frame: pl.DataFrame, key: list[str]) -> None:
        """Queue side rows (signatures, clusters) written in the same transaction as this batch's decisions."""
        self._extra.append((table, frame, key))

    def process(self, batch: pl.DataFrame) -> pl.DataFrame:
        verdicts = self.judge_batch(batch)
        if len(verdicts) != batch.height:
            raise RuntimeError(f"{self.name}: judge_batch returned {len(verdicts)} verdicts for {batch.height} rows")
        return pl.DataFrame({
            "example_id": batch["id"],
            "stage": [self.name] * batch.height,
            "keep": [bool(v[0]) for v in verdicts],
            "reason": [v[1] for v in verdicts],
            "score": [None if v[2] is None else float(v[2]) for v in verdicts],
            "params_hash": [self.params_hash] * batch.height,
            "enforced": [self.enforced] * batch.height,
            "run_id": [self.run_id] * batch.height,
        }, schema=DECISION_SCHEMA)

    def write(self, con: duckdb.DuckDBPyConnection, decisions: pl.DataFrame) -> int:
        extra, self._extra = self._extra, []
        for table, frame, key in extra:
            insert_frame(con, table, frame, key)
        return insert_frame(con, "decisions", decisions, ["example_id", "stage"])


def pending_examples(cat: Catalog, stage: str, langs: list[str] | None = None) -> pl.DataFrame:
    """Examples `stage` has not judged and no other stage rejected, in first-seen order (created_at, id)."""
    where, params = "", [stage]
    if langs:
        where = f"AND e.lang IN ({', '.join('?' * len(langs))})"
        params += list(langs)
    return cat.frame(
        f"SELECT {', '.join('e.' + c.strip() for c in EXAMPLE_COLUMNS.split(','))} FROM examples e "
        "WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.example_id = e.id AND d.stage = ?) "
        "AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.example_id = e.id AND NOT d.keep AND d.enforced) "
        f"{where} ORDER BY e.created_at, e.id", params)


def run_filter(cat: Catalog, flt: Filter, run_id: str | None, langs: list[str] | None = None,
               label_only: bool = False, progress: bool = True) -> dict[str, Any]:
    """Judge every pending example with `flt`; returns {'judged', 'rejected', 'reasons': {reason: n}}."""
    flt.run_id, flt.enforced = run_id, not label_only
    pending = pending_examples(cat, flt.name, langs)
    if pending.is_empty():
        return {"judged": 0, "rejected": 0}
    flt.prepare(cat, pending)
    tally: dict[str, int] = {}

    def write(con: duckdb.DuckDBPyConnection, out: pl.DataFrame) -> int:
        for r in out.filter(~pl.col("keep"))["reason"].to_list():
            fam = reason_family(r)
            tally[fam] = tally.get(fam, 0) + 1
        return flt.write(con, out)

    written = drive(cat, flt, pending, write, batch_size=flt.batch_size, desc=f"filter {flt.name}",
                    progress=progress)
    return {"judged": written, "rejected": sum(tally.values()),
            "reasons": dict(sorted(tally.items(), key=lambda kv: -kv[1]))}


def reason_family(reason: str) -> str:
    """`dedup:near_dup_of:<id>` -> `dedup:near_dup_of:*` (ids vary; the family is what one counts)."""
    if reason.startswith(("dedup:exact_dup_of:", "dedup:near_dup_of:")):
        return reason.rsplit(":", 1)[0] + ":*"
    return reason
