"""LLM generation as a stage: planned requests -> backend -> generations + examples (+ translation group links).

The `generate` stage streams from its backend, so it maps onto the stage contract like this (and is run by
`execute_stream` below, which owns what `compass.runner.execute` owns for a catalog-fed stage):
- `prepare(cat)`: the plan (a pure function of the catalog, the templates and the config: the same request ids on
  every run) and the requests already answered (status ok or reject). Resume = those are not sent again; a
  request that failed after retries, or was skipped as too long, has no answer, so a rerun sends it again and its
  row is replaced.
- `setup()`: the backend opens (`compass.datagen.backends` registry) and the context check runs: with
  `max_model_len` (or the server's /v1/models) and the model's tokenizer, a prompt that cannot fit is not sent but
  stored as `reject` / `too_long` (judged again on a rerun).
- a *batch* is a chunk of results in arrival order: every `write_every` results or `write_seconds`, whichever
  comes first, while the backend keeps streaming (the async client never waits for a commit). `process(batch)` is
  the parse step (answer -> validated JSON -> pairs with class ids and lineage); it depends only on the batch and
  the plan, so it is shardable. `write` commits one batch in one transaction: a SIGKILL loses at most the
  requests in flight and the current chunk, and every row has a content-hash key, so nothing is written twice.

On Ray (`executor="ray"`: `ray_executor` below, compass.datagen.llm_ray) only where the answers come from changes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import polars as pl
from tqdm.auto import tqdm

from compass.catalog.db import Catalog, Run, registered
from compass.datagen.answers import example_row, grounded_pairs, parse_answer, translate_pair
from compass.datagen.backends import Backend, LLMResult, make_backend
from compass.datagen.generate import GenerateConfig
from compass.datagen.llm_checks import RETRY_SQL, TOO_LONG, context_check, too_long
from compass.datagen.plan import Planned, market_of
from compass.errors import CompassError
from compass.registry import stages
from compass.runner import RunSummary
from compass.stage import Stage, insert_frame

GEN_SCHEMA = {
    "request_id": pl.Utf8, "run_id": pl.Utf8, "route": pl.Utf8, "template_id": pl.Utf8,
    "template_version": pl.Utf8, "product_id": pl.Utf8, "source_example_id": pl.Utf8, "lang": pl.Utf8,
    "persona": pl.Utf8, "task": pl.Utf8, "model": pl.Utf8, "backend": pl.Utf8, "messages": pl.Utf8,
    "sampling": pl.Utf8, "seed": pl.Int64, "status": pl.Utf8, "reject_reason": pl.Utf8, "raw_text": pl.Utf8,
    "parsed": pl.Utf8, "finish_reason": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "latency_ms": pl.Float64, "attempts": pl.Int32, "error_message": pl.Utf8,
}
EX_SCHEMA = {k: pl.Utf8 for k in ("id", "route", "lang", "market", "task", "persona", "anchor", "positive",
                                  "class_id", "product_id", "translation_group", "source_example_id",
                                  "template_id", "template_version", "request_id", "run_id")}
# One backend result as a row: the input of `process`.
RESULT_SCHEMA = {"request_id": pl.Utf8, "status": pl.Utf8, "text": pl.Utf8, "finish_reason": pl.Utf8,
                 "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64, "latency_ms": pl.Float64,
                 "attempts": pl.Int64, "error": pl.Utf8, "error_message": pl.Utf8}


def answered_ids(cat: Catalog, ids: list[str]) -> set[str]:
    """Request ids among `ids` that already have an answer (ok or reject)."""
    if not ids:
        return set()
    with registered(cat.con, "_ids", pl.DataFrame({"request_id": ids})):
        rows = cat.con.execute("SELECT g.request_id FROM generations g JOIN _ids USING (request_id) "
                               f"WHERE g.status IN ('ok', 'reject') AND NOT {RETRY_SQL}").fetchall()
    return {r[0] for r in rows}


def result_frame(results: list[LLMResult]) -> pl.DataFrame:
    return pl.DataFrame([{"request_id": r.request_id, "status": r.status, "text": r.text,
                          "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                          "completion_tokens": r.completion_tokens, "latency_ms": r.latency_ms,
                          "attempts": r.attempts, "error": r.error, "error_message": r.extra.get("error_message")}
                         for r in results], schema=RESULT_SCHEMA)


def _result(row: dict) -> LLMResult:
    return LLMResult(row["request_id"], row["status"], text=row["text"], finish_reason=row["finish_reason"],
                     prompt_tokens=row["prompt_tokens"], completion_tokens=row["completion_tokens"],
                     latency_ms=row["latency_ms"], attempts=row["attempts"], error=row["error"],
                     extra={"error_message": row["error_message"]})


def to_rows(p: Planned, res: LLMResult, backend: str, run_id: str) -> tuple[dict, list[dict]]:
    """The generations row and the example rows for one result."""
    t = p.template
    status, reason, parsed, examples = res.status, res.error, None, []
    if res.status == "ok":
        parsed, reason = parse_answer(res.text, res.finish_reason, t.schema)
        status = "reject" if reason else "ok"
    lineage = {"template_id": t.id, "template_version": t.version, "request_id": p.request_id, "run_id": run_id}
    if status == "ok" and p.route == "grounded":
        prod = p.row
        for task, anchor, positive, cls in grounded_pairs(p.task, parsed, prod):
            examples.append(example_row("grounded", p.lang, prod["market"], task, p.persona, anchor, positive, cls,
                                        product_id=prod["id"], translation_group=None, source_example_id=None,
                                        **lineage))
    elif status == "ok":
        src = p.row
        pair = translate_pair(parsed, src)
        if pair:
            examples.append(example_row("translate", p.lang, market_of(p.lang), src["task"], src["persona"],
                                        pair[0], pair[1], src["class_id"], product_id=src["product_id"],
                                        translation_group=src["translation_group"] or src["id"],
                                        source_example_id=src["id"], **lineage))
    if status == "ok" and not examples:
        status, reason = "reject", "answer:no_new_pair"  # e.g. every query equal to the title
    if res.error == TOO_LONG:
        status = "reject"
    gen = {
        "request_id": p.request_id, "run_id": run_id, "route": p.route, "template_id": t.id,
        "template_version": t.version, "product_id": p.row["id"] if p.route == "grounded" else p.row["product_id"],
        "source_example_id": p.row["id"] if p.route == "translate" else None, "lang": p.lang,
        "persona": p.persona, "task": p.task, "model": p.model, "backend": backend,
        "messages": json.dumps(p.request.messages, ensure_ascii=False),
        "sampling": json.dumps(p.request.sampling.as_dict()), "seed": p.request.seed, "status": status,
        "reject_reason": reason, "raw_text": res.text, "parsed": json.dumps(parsed, ensure_ascii=False) if parsed
        else None, "finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens, "latency_ms": res.latency_ms, "attempts": res.attempts,
        "error_message": res.extra.get("error_message"),
    }
    return gen, examples


@stages.register
class LLMGenerate(Stage):
    """The grounded / translate routes: planned requests in, generations and examples out."""

    name = "generate"
    Config = GenerateConfig
    writes = {"generations": ("request_id",), "examples": ("id",)}
    unit = "req"
    volatile = frozenset({"write_every", "write_seconds"})
    executor = "compass.datagen.llm_run:execute_stream"  # fed by the backend, not by a catalog selection
    ray_executor = "compass.datagen.llm_ray:execute_ray_stream"  # the same loop, answers from Ray workers

    def __init__(self, config=None, **overrides: Any):
        super().__init__(config, **overrides)
        self.planned: list[Planned] | None = None   # set by prepare() (or given, for benchmarks)
        self.by_id: dict[str, Planned] = {}
        self.done: set[str] = set()
        self.backend: Backend | None = None
        self.skipped: dict[str, int] = {}
        self.max_model_len: int | None = None

    def select(self, langs=None):
        raise CompassError("stage generate streams from its LLM backend: its executor (execute_stream) plans "
                           "the requests; compass.run(cat, 'generate', config) calls it")

    def prepare(self, cat: Catalog, langs: list[str] | None = None) -> None:
        if self.planned is None:
            from compass.datagen.generate import plan_requests

            self.planned = plan_requests(cat, self.config, langs)
        self.by_id = {p.request_id: p for p in self.planned}
        self.done = answered_ids(cat, list(self.by_id))

    @property
    def pending(self) -> list[Planned]:
        return [p for p in self.by_id.values() if p.request_id not in self.done]

    def setup(self) -> None:
        c = self.config
        if self.backend is None:
            self.backend = make_backend(c.backend, c.model, c.options)
        limit, counter = context_check(self.backend, c.model, c.max_model_len)
        self.max_model_len = limit
        self.skipped = too_long(self.pending, limit, counter)

    def skipped_results(self) -> Iterator[LLMResult]:
        """The too-long requests as results (unsent)."""
        for rid, n in self.skipped.items():
            yield LLMResult(rid, "failed", prompt_tokens=n, attempts=0, error=TOO_LONG,
                            extra={"error_message": f"prompt of {n} tokens >= max_model_len {self.max_model_len}: "
                                                    "not sent"})

    def to_send(self) -> list[Planned]:
        return [p for p in self.pending if p.request_id not in self.skipped]

    def results(self) -> Iterator[LLMResult]:
        """Too-long requests as results (unsent), then the backend's answers as they complete."""
        yield from self.skipped_results()
        yield from self.backend.stream(p.request for p in self.to_send())

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        gens, exs = [], []
        name = self.backend.name if self.backend is not None else self.config.backend
        for row in batch.iter_rows(named=True):
            gen, ex = to_rows(self.by_id[row["request_id"]], _result(row), name, self.run_id)
            gens.append(gen)
            exs.extend(ex)
        return {"generations": pl.DataFrame(gens, schema=GEN_SCHEMA), "examples": pl.DataFrame(exs, schema=EX_SCHEMA)}

    def write(self, con: duckdb.DuckDBPyConnection, outputs: dict[str, pl.DataFrame]) -> dict[str, int]:
        """One transaction: replace the `failed` / too-long rows being retried, add generations, examples, and
        link each translated source example to its own translation group."""
        gframe, eframe = outputs["generations"], outputs["examples"]
        with registered(con, "_done", gframe.select("request_id")):
            con.execute(f"DELETE FROM generations WHERE {RETRY_SQL} AND request_id IN (SELECT request_id FROM _done)")
        added = {"generations": insert_frame(con, "generations", gframe, ["request_id"]),
                 "examples": insert_frame(con, "examples", eframe, ["id"])}
        sources = eframe.filter(pl.col("source_example_id").is_not_null())
        if not sources.is_empty():
            # A source example joins its own translation group, so a group is one column to group by.
            with registered(con, "_src", sources.select("source_example_id").unique()):
                con.execute("UPDATE examples SET translation_group = id WHERE translation_group IS NULL "
                            "AND id IN (SELECT source_example_id FROM _src)")
        return added

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict:
        g = outputs["generations"]
        counts = Counter(g["status"].to_list())
        return {"ok": counts["ok"], "reject": counts["reject"], "failed": counts["failed"],
                "too_long": int((g["reject_reason"] == TOO_LONG).sum())}


def execute_stream(cat: Catalog, stage: LLMGenerate, rec: Run | None, *, langs: list[str] | None = None,
                   progress: bool = True, answers: Callable[[LLMGenerate], Iterator[LLMResult]] | None = None,
                   where: str = "") -> RunSummary:
    """`compass.runner.execute` for a stage fed by its backend: plan, send, commit a chunk at a time.

    `answers(stage)`: where the results come from once the stage is set up (default `stage.results()`, the
    backend in this process; compass.datagen.llm_ray passes Ray workers); `where` names it on the progress bar."""
    t0 = time.perf_counter()
    stage.run_id = rec.id if rec is not None else None
    summary = RunSummary(stage.run_id, stage.name, stage.params_hash)
    stage.prepare(cat, langs)
    info = summary.info
    info.update(requested=len(stage.by_id), already_answered=len(stage.done), sent=0, ok=0, reject=0, failed=0,
                too_long=0, new_examples=0)
    if stage.pending:
        stage.setup()
        info["max_model_len"] = stage.max_model_len
        info["sent"] = len(stage.pending) - len(stage.skipped)
        every, seconds = max(1, stage.config.write_every), stage.config.write_seconds
        bar = tqdm(total=len(stage.by_id), initial=len(stage.done), desc=f"generate ({stage.backend.name}{where})",
                   unit=stage.unit, disable=not progress, dynamic_ncols=True)
        chunk: list[LLMResult] = []
        last = time.monotonic()

        def flush() -> None:
            nonlocal chunk, last
            if chunk:
                outputs = stage.process(result_frame(chunk))
                with cat.transaction() as con:
                    added = stage.write(con, outputs)
                for table, n in added.items():
                    summary.written[table] = summary.written.get(table, 0) + n
                for k, v in stage.summarize(outputs).items():
                    info[k] += v
                summary.read += len(chunk)
            chunk, last = [], time.monotonic()

        try:
            for res in (answers(stage) if answers is not None else stage.results()):
                chunk.append(res)
                bar.update(1)
                if len(chunk) >= every or time.monotonic() - last >= seconds:
                    flush()
                    bar.set_postfix(rejects=info["reject"] - info["too_long"], failed=info["failed"], refresh=False)
        finally:
            flush()  # on Ctrl-C too: results already received are kept
            bar.close()
        info["reject"] -= info["too_long"]  # too-long rows are rejects in the table, a separate count here
    info["new_examples"] = summary.written.get("examples", 0)
    summary.nothing_to_do = not stage.pending
    summary.seconds = round(time.perf_counter() - t0, 3)
    return summary


def run_plan(cat: Catalog, run_id: str, planned: list[Planned], backend: Backend, *, write_every: int = 32,
             write_seconds: float = 2.0, progress: bool = True, max_model_len: int | None = 0) -> dict:
    """A given plan through a given backend, inside run `run_id` (benchmarks); returns the accounting."""
    p = planned[0] if planned else None
    stage = LLMGenerate(route=p.route if p else "grounded", model=backend.model, backend=backend.name,
                        max_model_len=max_model_len, write_every=write_every, write_seconds=write_seconds)
    stage.planned, stage.backend = planned, backend
    return execute_stream(cat, stage, Run(id=run_id, command=stage.name, summary={}), progress=progress).info
