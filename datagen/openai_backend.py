"""The `openai` backend: any OpenAI-compatible endpoint, async, with a concurrency limit.

Retries are ours, not the client's (`max_retries=0`): the client would also retry 408 and 409 and caps how
long it honours Retry-After, while compass retries exactly 429, 5xx, timeouts and dropped connections,
honours Retry-After (seconds, HTTP date or retry-after-ms) whatever its length up to `backoff_max`, and
counts attempts for the generations table. Everything else (400, 401, 404...) fails at once: retrying a bad
request only burns quota. A failure keeps the server's own message (scrubbed of secrets) next to its short code,
so "the prompt exceeds the model's context" is not reduced to `http_400`.

The key comes from OPENAI_API_KEY or COMPASS_API_KEY at call time and is held by the client only; nothing
here writes it anywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import queue
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from compass.datagen.backends import LLMRequest, LLMResult, backends
from compass.errors import CompassError

_DONE = object()
MAX_MESSAGE = 500
# What servers say when prompt + max_tokens does not fit (vLLM, OpenAI, llama.cpp, TGI wordings).
_CONTEXT = re.compile(r"maximum context length|context[_ ]length[_ ]exceeded|greater than max_model_len|"
                      r"exceeds? (?:the )?(?:model'?s? )?"
                      r"(?:maximum )?context|context (?:window|size) (?:is )?(?:exceeded|too small)|"
                      r"prompt is too long|input (?:is )?too long|too many (?:input )?tokens", re.I)
# Fallback shapes of secrets, until compass.secrets (one shared rule for the whole project) is there.
_KEYLIKE = re.compile(r"(?i)(?:\b(?:sk|pk|rk|hf|ghp|gho|xox[abp])[-_][A-Za-z0-9_\-]{8,}|\bBearer\s+\S+|"
                      r"(?<=[?&;])[^=&\s]*(?:key|token|secret|password|sig)[^=&\s]*=[^&\s]+|"
                      r"(?<=://)[^/@\s]+(?=@))")


def scrub_message(text: str | None) -> str | None:
    """A server message fit to store and print: secrets masked, one line, at most MAX_MESSAGE characters.

    The one place server text is scrubbed: it uses the project's shared rule (compass.secrets.scrub_text)
    when that module exists, else the fallback patterns above.
    """
    if not text:
        return None
    try:
        from compass.secrets import scrub_text  # type: ignore[import-not-found]
    except ImportError:
        scrub_text = None
    text = scrub_text(text) if scrub_text else _KEYLIKE.sub("***", text)
    text = " ".join(str(text).split())
    return text[:MAX_MESSAGE - 3] + "..." if len(text) > MAX_MESSAGE else text


def is_context_error(message: str | None) -> bool:
    """Whether a server message says the prompt (plus max_tokens) exceeds the model's context."""
    return bool(message and _CONTEXT.search(message))


def server_message(e) -> str | None:
    """The `message` of an OpenAI-style error body ({"error": {"message": ...}}), else the body itself."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        msg = body.get("message") or body.get("detail") or body.get("error")
        return msg if isinstance(msg, str) else str(body)
    if isinstance(body, str) and body.strip():
        return body
    text = getattr(getattr(e, "response", None), "text", None)
    return text if isinstance(text, str) and text.strip() else None


def api_key(base_url: str | None) -> str:
    key = os.environ.get("OPENAI_API_KEY") or os.environ.get("COMPASS_API_KEY")
    if key:
        return key
    if base_url:  # local servers (vLLM, llama.cpp) accept any key
        return "EMPTY"
    raise CompassError("--backend openai without --base-url talks to api.openai.com: set OPENAI_API_KEY or "
                       "COMPASS_API_KEY in the environment (never on the command line)")


def retry_after_seconds(headers) -> float | None:
    """Retry-After as seconds: `retry-after-ms`, then `retry-after` as seconds or an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: Optional[str] = Field(None, description="Server URL, e.g. http://127.0.0.1:8000/v1. Key from "
                                                      "OPENAI_API_KEY or COMPASS_API_KEY.")
    concurrency: int = Field(8, description="Requests in flight.")
    timeout: float = Field(120.0, description="Seconds per attempt.")
    max_retries: int = Field(5, description="Retries after 429, 5xx, timeouts, dropped connections.")
    backoff: float = Field(0.5, description="First retry delay in seconds (doubles, with jitter; Retry-After "
                                            "wins).")


@backends.register
class OpenAIBackend:
    name = "openai"
    Options = OpenAIOptions

    @classmethod
    def from_options(cls, model: str, o: OpenAIOptions) -> OpenAIBackend:
        return cls(model, base_url=o.base_url, concurrency=o.concurrency, timeout=o.timeout,
                   max_retries=o.max_retries, backoff_base=o.backoff)

    def __init__(self, model: str, *, base_url: str | None = None, concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 5, backoff_base: float = 0.5, backoff_max: float = 60.0,
                 structured: bool = True):
        if concurrency < 1:
            raise CompassError("--concurrency must be at least 1")
        self.model, self.base_url, self.concurrency = model, base_url, concurrency
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max, self.structured = backoff_base, backoff_max, structured

    def _client(self):
        import openai

        return openai.AsyncOpenAI(api_key=api_key(self.base_url), base_url=self.base_url, max_retries=0,
                                  timeout=self.timeout)

    def max_model_len(self) -> int | None:
        """The served model's context length from `GET /v1/models` (vLLM reports `max_model_len`), or None."""
        import openai

        try:
            client = openai.OpenAI(api_key=api_key(self.base_url), base_url=self.base_url, max_retries=1,
                                   timeout=min(self.timeout, 30.0))
            try:
                models = list(client.models.list())
            finally:
                client.close()
        except (openai.OpenAIError, OSError):
            return None  # an older server or no /models: the server's own check still applies
        for m in models:
            n = getattr(m, "max_model_len", None) or (m.model_extra or {}).get("max_model_len")
            if m.id == self.model and isinstance(n, int):
                return n
        return None

    def _kwargs(self, req: LLMRequest) -> dict:
        kw = dict(model=self.model, messages=req.messages, temperature=req.sampling.temperature,
                  top_p=req.sampling.top_p, max_tokens=req.sampling.max_tokens, seed=req.seed,
                  extra_headers={"X-Compass-Request-Id": req.request_id})
        if self.structured:
            kw["response_format"] = {"type": "json_schema", "json_schema": {
                "name": req.schema_name, "schema": req.schema, "strict": True}}
        return kw

    def _delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        # Full jitter on an exponential ceiling spreads a burst of 429s instead of retrying in lockstep.
        backoff = rng.uniform(0.5, 1.0) * min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        if retry_after is not None:
            return min(self.backoff_max, max(retry_after, backoff))
        return backoff

    async def complete(self, client, req: LLMRequest) -> LLMResult:
        """One request with retries; never raises for a per-request failure."""
        import openai

        rng = random.Random(req.request_id)
        attempt = 0
        while True:
            attempt += 1
            t0 = time.perf_counter()
            retry_after, message = None, None
            try:
                resp = await client.chat.completions.create(**self._kwargs(req))
                choice = resp.choices[0]
                usage = resp.usage
                return LLMResult(req.request_id, "ok", text=choice.message.content or "",
                                 finish_reason=choice.finish_reason,
                                 prompt_tokens=getattr(usage, "prompt_tokens", None),
                                 completion_tokens=getattr(usage, "completion_tokens", None),
                                 latency_ms=(time.perf_counter() - t0) * 1000.0, attempts=attempt)
            except openai.APIStatusError as e:
                code = e.status_code
                error, retryable = f"http_{code}", code == 429 or code >= 500
                retry_after = retry_after_seconds(getattr(e.response, "headers", None))
                message = server_message(e)
            except openai.APITimeoutError:
                error, retryable = "timeout", True
            except openai.APIConnectionError:
                error, retryable = "connection", True
            except (ValueError, openai.APIResponseValidationError) as e:
                # A 200 whose body is not a chat completion: the server is broken, not busy.
                error, retryable, message = f"bad_response:{type(e).__name__}", False, str(e)
            if not retryable or attempt > self.max_retries:
                return LLMResult(req.request_id, "failed", attempts=attempt, error=error,
                                 latency_ms=(time.perf_counter() - t0) * 1000.0,
                                 extra={"error_message": scrub_message(message)})
            await asyncio.sleep(self._delay(attempt, retry_after, rng))

    async def _run(self, requests: Iterable[LLMRequest], out: queue.Queue, stop: threading.Event) -> None:
        client = self._client()
        it = iter(requests)
        lock = threading.Lock()

        def next_req():
            with lock:
                return next(it, None)

        async def worker():
            # A fixed pool of workers pulling from one iterator: concurrency-bounded without creating a task
            # per request up front (a million-request plan stays flat in memory).
            while not stop.is_set() and (req := next_req()) is not None:
                out.put(await self.complete(client, req))

        try:
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        finally:
            await client.close()

    def stream(self, requests: Iterable[LLMRequest]) -> Iterator[LLMResult]:
        out: queue.Queue = queue.Queue()
        stop = threading.Event()

        def target():
            try:
                asyncio.run(self._run(requests, out, stop))
            except BaseException as e:  # surfaced in the consuming thread
                out.put(e)
            finally:
                out.put(_DONE)

        thread = threading.Thread(target=target, name="compass-openai", daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # workers finish their in-flight request and stop; their results are dropped
