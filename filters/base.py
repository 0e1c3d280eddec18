"""The filter contract: examples in, decisions out, as a `compass.stage.Stage`.

A filter is a `Filter` subclass with one method, `judge(example) -> (keep, reason, score)`, or
`judge_batch(frame) -> list of verdicts` when it is faster to look at a whole batch (one model call, one
vectorised pass). The base class is the stage: it selects the pending examples, turns verdicts into decision
rows (stage, keep, reason, score, params hash, enforced, run id) and counts reject reasons; the runner
(`compass.run` / `compass.runner.execute`) streams the batches, writes each in one transaction and records the
run. No filter holds a catalog connection.

Decisions are keyed by (example, stage, params hash). Pending for a stage = examples with no decision of
(this stage, this params hash) that no enforced decision (of any stage, any parameters) rejects. So each stage
sees what the stages before it kept, a rerun judges nothing twice, and a changed parameter (a new `--against`
eval set, another threshold) judges again what is still kept.
"""

from __future__ import annotations

from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel

from compass.catalog.db import Catalog, Run
from compass.stage import Selection, Stage

Verdict = tuple[bool, str, "float | None"]
OK: Verdict = (True, "ok", None)

# The order stages run in and the funnel shows them.
STAGE_ORDER = ("langid", "quality", "dedup", "leakage")
DECISION_KEY = ("example_id", "stage", "params_hash")

DECISION_SCHEMA = {
    "example_id": pl.Utf8, "stage": pl.Utf8, "keep": pl.Boolean, "reason": pl.Utf8, "score": pl.Float64,
    "params_hash": pl.Utf8, "enforced": pl.Boolean, "run_id": pl.Utf8,
}
EXAMPLE_COLUMNS = ("id", "route", "lang", "market", "task", "persona", "anchor", "positive", "class_id",
                   "created_at")


class FilterConfig(BaseModel):
    """Fields every filter has. `label_only`: record decisions without excluding anything (enforced = false)."""

    label_only: bool = False


def pending_where(stage: str | None, params_hash: str | None, langs: list[str] | None = None
                  ) -> tuple[str, list[Any]]:
    """WHERE clause (over `examples e`) and parameters: not judged by `stage` with `params_hash` (when given),
    rejected by no enforced decision, in `langs`."""
    where = ("WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.example_id = e.id AND NOT d.keep "
             "AND d.enforced)")
    params: list[Any] = []
    if stage is not None:
        where += (" AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.example_id = e.id AND d.stage = ? "
                  "AND d.params_hash = ?)")
        params += [stage, params_hash]
    if langs:
        where += f" AND e.lang IN ({', '.join('?' * len(langs))})"
        params += list(langs)
    return where, params


def pending_selection(stage: str, params_hash: str, langs: list[str] | None = None, *,
                      columns: str | None = None, joins: str = "", ordered: bool = True) -> Selection:
    """Examples `stage` has not judged with `params_hash` and no enforced decision rejected, first-seen order
    (`ordered`), else the table's order.

    `joins` (no bound parameters: they would precede the WHERE's) adds columns from other tables. A shardable
    filter does not need the order (each verdict depends on its example only, so any batches give the same
    decisions) and skips the sort: every pending example with its texts, 5M rows spilling past DuckDB's cap at 1M
    products, 10% of langid's CPU there (issue 15)."""
    cols = columns or ", ".join(f"e.{c}" for c in EXAMPLE_COLUMNS)
    where, params = pending_where(stage, params_hash, langs)
    order = " ORDER BY e.created_at, e.id" if ordered else ""
    return Selection(f"SELECT {cols} FROM examples e {joins} {where}{order}", params,
                     f"SELECT count(*) FROM examples e {where}")


class Filter(Stage):
    """Subclasses set `name`, `Config` (a FilterConfig) and implement `judge` or `judge_batch`."""

    name: ClassVar[str] = "filter"
    Config: ClassVar[type[BaseModel]] = FilterConfig
    writes: ClassVar[dict[str, tuple[str, ...]]] = {"decisions": DECISION_KEY}
    # The pending selection excludes what this stage judged with these params: its decisions' keys are new.
    appends: ClassVar[frozenset[str]] = frozenset({"decisions"})
    # Rows per transaction: each commit has a fixed cost (and, before `appends`, anti-joined the decisions table),
    # so fewer, larger batches keep a stage linear in the catalog (2,000 made langid 15.5x slower from 100k to 1M
    # products, issue 15); a killed run redoes at most one batch.
    batch_size: ClassVar[int] = 20000
    unit: ClassVar[str] = "examples"

    @property
    def enforced(self) -> bool:
        return not getattr(self.config, "label_only", False)

    def params(self) -> dict:
        # label_only joins the parameters only when set, so enforced runs keep the hashes earlier compass
        # versions stored (their decisions stay valid: nothing is judged twice after an upgrade).
        p = super().params()
        if not p.get("label_only"):
            p.pop("label_only", None)
        return p

    def select(self, langs: list[str] | None = None) -> Selection:
        return pending_selection(self.name, self.params_hash, langs, ordered=not self.shardable)

    def judge(self, example: dict) -> Verdict:
        raise NotImplementedError(f"{type(self).__name__} implements neither judge nor judge_batch")

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        return [self.judge(row) for row in batch.iter_rows(named=True)]

    def decisions(self, ids: pl.Series | list[str], verdicts: list[Verdict]) -> pl.DataFrame:
        n = len(verdicts)
        if len(ids) != n:
            raise RuntimeError(f"{self.name}: judge_batch returned {n} verdicts for {len(ids)} rows")
        return pl.DataFrame({
            "example_id": ids,
            "stage": [self.name] * n,
            "keep": [bool(v[0]) for v in verdicts],
            "reason": [v[1] for v in verdicts],
            "score": [None if v[2] is None else float(v[2]) for v in verdicts],
            "params_hash": [self.params_hash] * n,
            "enforced": [self.enforced] * n,
            "run_id": [self.run_id] * n,
        }, schema=DECISION_SCHEMA)

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        return {"decisions": self.decisions(batch["id"], self.judge_batch(batch))}

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict[str, Any]:
        d = outputs.get("decisions")
        if d is None or d.is_empty():
            return {}
        rej = d.filter(~pl.col("keep"))
        reasons: dict[str, int] = {}
        for r in rej["reason"].to_list():
            fam = reason_family(r)
            reasons[fam] = reasons.get(fam, 0) + 1
        return {"judged": d.height, "rejected": rej.height, "reasons": reasons}


def result(summary) -> dict[str, Any]:
    """A RunSummary as `compass filter` reports it: {'judged', 'rejected', 'reasons': {family: n}}."""
    if summary.nothing_to_do:
        return {"judged": 0, "rejected": 0}
    reasons = summary.info.get("reasons", {})
    return {"judged": summary.written.get("decisions", 0), "rejected": summary.info.get("rejected", 0),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}


def run_filter(cat: Catalog, flt: Filter, run_id: str | None, langs: list[str] | None = None,
               label_only: bool = False, progress: bool = True) -> dict[str, Any]:
    """Judge every pending example with `flt` under the run `run_id` (opened by the caller, or None).

    A convenience over `compass.runner.execute`; returns {'judged', 'rejected', 'reasons': {reason: n}}."""
    from compass.runner import execute

    if label_only and flt.enforced:
        flt.config = flt.config.model_copy(update={"label_only": True})
    rec = Run(run_id, flt.name, {}) if run_id is not None else None
    return result(execute(cat, flt, rec, langs=langs, progress=progress))


def reason_family(reason: str) -> str:
    """`dedup:near_dup_of:<id>` -> `dedup:near_dup_of:*` (ids vary; the family is what one counts)."""
    if reason.startswith(("dedup:exact_dup_of:", "dedup:near_dup_of:")):
        return reason.rsplit(":", 1)[0] + ":*"
    return reason
