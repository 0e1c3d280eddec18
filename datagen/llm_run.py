"""Run a plan through a backend into the catalog: resumable, one transaction per chunk of results.

Resume: requests with a stored answer (status ok or reject) are not sent again; a request that failed after
retries has no answer, so a rerun sends it again and its `failed` row is replaced.

Over-long prompts: when the model's context is known (`--max-model-len`, or the server's /v1/models) and the
model's tokenizer is at hand, a request whose prompt plus max_tokens cannot fit is not sent: it is stored as
`reject` with reason `too_long` and its prompt_tokens. That judgement depends on the server, not the request,
so a rerun judges it again (a bigger context sends it) and replaces the row, as for `failed`. Results are written as
they arrive, every `write_every` results (or `write_seconds`), each chunk in one transaction with its
generations rows and examples: a SIGKILL loses at most the results not yet written (the requests in flight
and the current chunk), and since every row has a content-hash key nothing is ever written twice.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

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
    "latency_ms": pl.Float64, "attempts": pl.Int32, "error_message": pl.Utf8,
}
TOO_LONG = "too_long"
# Rows a rerun judges again: no answer yet (failed), or skipped for a context the server may since have grown.
RETRY_SQL = "(status = 'failed' OR (status = 'reject' AND reject_reason = 'too_long'))"
EX_SCHEMA = {k: pl.Utf8 for k in ("id", "route", "lang", "market", "task", "persona", "anchor", "positive",
                                  "class_id", "product_id", "translation_group", "source_example_id",
                                  "template_id", "template_version", "request_id", "run_id")}


def answered_ids(cat: Catalog, ids: list[str]) -> set[str]:
    """Request ids among `ids` that already have an answer (ok or reject)."""
    if not ids:
        return set()
    with registered(cat.con, "_ids", pl.DataFrame({"request_id": ids})):
        rows = cat.con.execute("SELECT g.request_id FROM generations g JOIN _ids USING (request_id) "
                               f"WHERE g.status IN ('ok', 'reject') AND NOT {RETRY_SQL}").fetchall()
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


def write_chunk(cat: Catalog, gens: list[dict], examples: list[dict]) -> int:
    """One transaction: replace `failed` rows being retried, add generations, examples, group links."""
    gframe = pl.DataFrame(gens, schema=GEN_SCHEMA)
    eframe = pl.DataFrame(examples, schema=EX_SCHEMA)
    with cat.transaction() as con:
        with registered(con, "_done", gframe.select("request_id")):
            con.execute(f"DELETE FROM generations WHERE {RETRY_SQL} "
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


def prompt_counter(model: str | None) -> Callable[[list[dict], int], int] | None:
    """`count(messages, budget)`: prompt tokens (the chat template the server applies, then its tokenizer),
    exact whenever the answer could exceed `budget`, when --model is a local folder with a tokenizer; None
    otherwise (the server's own check then applies)."""
    if not model or not Path(model, "tokenizer_config.json").exists():
        return None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model)
    except (ImportError, OSError, ValueError):
        return None
    if not getattr(tok, "chat_template", None):
        return None

    def count(messages: list[dict], budget: int) -> int:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # No tokenizer makes more tokens than UTF-8 bytes (+1 for a BOS): a prompt whose bytes fit needs no
        # tokenizing, which keeps a million-request plan cheap.
        bound = len(text.encode("utf-8")) + 1
        if bound <= budget:
            return bound
        return len(tok(text, add_special_tokens=False)["input_ids"])

    return count


def too_long(pending: list[Planned], max_model_len: int | None, count) -> dict[str, int]:
    """{request id: prompt tokens} of the requests whose prompt leaves no room for one answer token.

    The prompt alone, not prompt + max_tokens: vLLM answers a request whose max_tokens overflows the context
    (it shortens the answer), and an answer shorter than max_tokens is often complete; only a prompt that fills
    the context is refused by every server.
    """
    if not max_model_len or count is None:
        return {}
    out = {}
    for p in pending:
        n = count(p.request.messages, max_model_len - 1)
        if n >= max_model_len:
            out[p.request_id] = n
    return out


def context_check(backend: Backend, model: str | None, max_model_len: int | None):
    """(max_model_len, token counter) for the too-long check, or (None, None) when it cannot be made.

    --max-model-len wins (0 turns the check off); else the server's /v1/models says (vLLM does).
    """
    if max_model_len == 0:
        return None, None
    limit = max_model_len
    if limit is None and hasattr(backend, "max_model_len"):
        limit = backend.max_model_len()
    if not limit:
        return None, None
    counter = prompt_counter(model)
    if counter is None:
        from compass.cli_common import console

        console.print(f"note: no local tokenizer for --model {model}: over-long prompts are left to the server "
                      f"(max_model_len {limit})", highlight=False)
        return None, None
    return limit, counter


def report_failures(res: dict, failures: list[dict], base_url: str | None, limit: int | None) -> None:
    """Print the most common server messages of failed / too-long requests; raise when every request failed."""
    from compass.catalog.db import scrub  # the catalog's URL rule: credentials never reach the terminal
    from compass.cli_common import console
    from compass.datagen.openai_backend import is_context_error
    from compass.errors import CompassError

    for f in failures:
        ctx = " (the prompt exceeds the model's context)" if is_context_error(f["message"]) else ""
        console.print(f"  {f['n']} {f['status']} {f['reason']}{ctx}: {f['message'] or '(no message from the server)'}",
                      highlight=False, markup=False, soft_wrap=True)
    if res.get("too_long"):
        console.print(f"{res['too_long']} requests not sent: the prompt exceeds the model's context (max_model_len "
                      f"{limit}); stored as reject too_long and judged again on a rerun (use --compact, or a model "
                      "with a longer context)", highlight=False, soft_wrap=True)
    failed = [f for f in failures if f["status"] == "failed"]
    if not (res["sent"] and res["failed"] == res["sent"]):
        return
    why = ", ".join(f"{f['reason']}: {f['n']}" for f in failed)
    first = next((f["message"] for f in failed if f["message"]), None)
    said = f"; the server said: {first}" if first else ""
    if any(is_context_error(f["message"]) for f in failed):
        raise CompassError(f"all {res['failed']} requests failed ({why}): the prompt exceeds the model's context"
                           f"{said}. Use --compact, a smaller --max-tokens or a longer-context model; with "
                           "--max-model-len (or a server that reports it) such requests are skipped as too_long")
    where = f" at {scrub(base_url)}" if base_url else ""
    hint = (" check that the server" + where + " is up and the model name is right," if not first else
            " fix what the server reports,")
    raise CompassError(f"all {res['failed']} requests failed ({why}){said}:{hint} then rerun the same command "
                       "(it resends only failed requests)")


def failure_summary(cat: Catalog, run_id: str, top: int = 3) -> list[dict]:
    """The most common (reason, server message) of this run's failed and too-long requests, with counts."""
    return cat.query(
        "SELECT status, reject_reason AS reason, error_message AS message, count(*) AS n FROM generations "
        f"WHERE run_id = ? AND {RETRY_SQL} GROUP BY ALL ORDER BY n DESC, reason, message LIMIT ?", [run_id, top])


def run_plan(cat: Catalog, run_id: str, planned: list[Planned], backend: Backend, *, write_every: int = 32,
             write_seconds: float = 2.0, progress: bool = True, max_model_len: int | None = None,
             count_tokens: Callable[[list[dict], int], int] | None = None) -> dict:
    """Send the unanswered requests of `planned`; returns the accounting of this run.

    With `max_model_len` and `count_tokens`, requests that cannot fit are stored as reject `too_long`, unsent.
    """
    by_id = {p.request_id: p for p in planned}
    done = answered_ids(cat, list(by_id))
    pending = [p for p in by_id.values() if p.request_id not in done]
    skipped = too_long(pending, max_model_len, count_tokens)
    pending = [p for p in pending if p.request_id not in skipped]
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
        for rid, n in skipped.items():
            gen, _ = to_rows(by_id[rid], LLMResult(rid, "failed", prompt_tokens=n, attempts=0, error=TOO_LONG,
                                                   extra={"error_message": f"prompt of {n} tokens >= max_model_len "
                                                                           f"{max_model_len}: not sent"}),
                             backend.name, run_id)
            gens.append(gen)
            counts[TOO_LONG] += 1
            bar.update(1)
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
            "too_long": counts[TOO_LONG], "new_examples": new_examples}
