"""What `generate` checks and reports around the LLM stage: prompts too long for the model's context, and the
most common server messages of failed requests (one clear line when every request failed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from compass.catalog.db import Catalog
from compass.datagen.backends import Backend

TOO_LONG = "too_long"
# Rows a rerun judges again: no answer yet (failed), or skipped for a context the server may since have grown.
RETRY_SQL = "(status = 'failed' OR (status = 'reject' AND reject_reason = 'too_long'))"


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


def too_long(pending: list, max_model_len: int | None, count) -> dict[str, int]:
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
