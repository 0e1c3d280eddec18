"""Run a plan through a backend into the catalog: resumable, one transaction per chunk of results.

Resume: requests with a stored answer (status ok or reject) are not sent again; a request that failed after
retries has no answer, so a rerun sends it again and its `failed` row is replaced. Results are written as
they arrive, every `write_every` results (or `write_seconds`), each chunk in one transaction with its
generations rows and examples: a SIGKILL loses at most the results not yet written (the requests in flight
and the current chunk), and since every row has a content-hash key nothing is ever written twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import polars as pl
from tqdm.auto import tqdm

from compass.catalog.db import Catalog, registered
from compass.datagen.answers import example_row, grounded_pairs, parse_answer, translate_pair
from compass.datagen.backends import Backend, LLMResult
from compass.datagen.plan import Planned, market_of
from compass.stage import insert_frame

GEN_SCHEMA = {
    "request_id": pl.Utf8, "run_id": pl.Utf8, "route": pl.Utf8, "template_id": pl.Utf8,
    "template_version": pl.Utf8, "product_id": pl.Utf8, "source_example_id": pl.Utf8, "lang": pl.Utf8,
    "persona": pl.Utf8, "task": pl.Utf8, "model": pl.Utf8, "backend": pl.Utf8, "messages": pl.Utf8,
    "sampling": pl.Utf8, "seed": pl.Int64, "status": pl.Utf8, "reject_reason": pl.Utf8, "raw_text": pl.Utf8,
    "parsed": pl.Utf8, "finish_reason": pl.Utf8, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
    "latency_ms": pl.Float64, "attempts": pl.Int32,
}
EX_SCHEMA = {k: pl.Utf8 for k in ("id", "route", "lang", "market", "task", "persona", "anchor", "positive",
                                  "class_id", "product_id", "translation_group", "source_example_id",
                                  "template_id", "template_version", "request_id", "run_id")}


def answered_ids(cat: Catalog, ids: list[str]) -> set[str]:
    """Request ids among `ids` that already have an answer (ok or reject)."""
    if not ids:
        return set()
    with registered(cat.con, "_ids", pl.DataFrame({"request_id": ids})):
        rows = cat.con.execute("SELECT g.request_id FROM generations g JOIN _ids USING (request_id) "
                               "WHERE g.status IN ('ok', 'reject')").fetchall()
    return {r[0] for r in rows}


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
    }
    return gen, examples


def write_chunk(cat: Catalog, gens: list[dict], examples: list[dict]) -> int:
    """One transaction: replace `failed` rows being retried, add generations, examples, group links."""
    gframe = pl.DataFrame(gens, schema=GEN_SCHEMA)
    eframe = pl.DataFrame(examples, schema=EX_SCHEMA)
    with cat.transaction() as con:
        with registered(con, "_done", gframe.select("request_id")):
            con.execute("DELETE FROM generations WHERE status = 'failed' "
                        "AND request_id IN (SELECT request_id FROM _done)")
        insert_frame(con, "generations", gframe.with_columns(pl.col("messages", "sampling", "parsed")
                                                            .cast(pl.Utf8)), ["request_id"])
        new = insert_frame(con, "examples", eframe, ["id"])
        sources = eframe.filter(pl.col("source_example_id").is_not_null())
        if not sources.is_empty():
            # A source example joins its own translation group, so a group is one column to group by.
            with registered(con, "_src", sources.select("source_example_id").unique()):
                con.execute("UPDATE examples SET translation_group = id WHERE translation_group IS NULL "
                            "AND id IN (SELECT source_example_id FROM _src)")
    return new


def run_plan(cat: Catalog, run_id: str, planned: list[Planned], backend: Backend, *, write_every: int = 32,
             write_seconds: float = 2.0, progress: bool = True) -> dict:
    """Send the unanswered requests of `planned`; returns the accounting of this run."""
    by_id = {p.request_id: p for p in planned}
    done = answered_ids(cat, list(by_id))
    pending = [p for p in by_id.values() if p.request_id not in done]
    counts: Counter = Counter()
    new_examples = 0
    bar = tqdm(total=len(by_id), initial=len(done), desc=f"generate ({backend.name})", unit="req",
               disable=not progress, dynamic_ncols=True)
    gens: list[dict] = []
    exs: list[dict] = []
    last = time.monotonic()

    def flush() -> None:
        nonlocal gens, exs, new_examples, last
        if gens:
            new_examples += write_chunk(cat, gens, exs)
        gens, exs, last = [], [], time.monotonic()

    try:
        for res in backend.stream(p.request for p in pending):
            gen, ex = to_rows(by_id[res.request_id], res, backend.name, run_id)
            gens.append(gen)
            exs.extend(ex)
            counts[gen["status"]] += 1
            bar.update(1)
            bar.set_postfix(rejects=counts["reject"], failed=counts["failed"], refresh=False)
            if len(gens) >= write_every or time.monotonic() - last >= write_seconds:
                flush()
    finally:
        flush()  # on Ctrl-C too: results already received are kept
        bar.close()
    return {"requested": len(by_id), "already_answered": len(done), "sent": len(pending),
            "ok": counts["ok"], "reject": counts["reject"], "failed": counts["failed"],
            "new_examples": new_examples}
