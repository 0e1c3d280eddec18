"""LLM backends behind one small interface: `stream(requests) -> iterator of results`.

A backend takes requests (messages, JSON schema, sampling, seed) and yields one `LLMResult` per request as
each completes, in any order. It never raises for one bad request: a request that cannot be answered comes
back with status `failed` and a reason, so the runner can account for every request it sent.

- `OpenAIBackend`: any OpenAI-compatible server through the async `openai` client (see `openai_backend.py`).
- `VLLMBackend`: the offline `vllm.LLM` engine, batched (see `vllm_backend.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; part of every request id."""

    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


@dataclass
class LLMRequest:
    request_id: str
    messages: list[dict]
    schema: dict
    sampling: Sampling
    seed: int
    schema_name: str = "answer"


@dataclass
class LLMResult:
    request_id: str
    status: str                       # ok (the server answered) | failed (no answer after retries)
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    attempts: int = 1
    error: str | None = None          # failed: short stable reason (http_500, timeout, connection, ...)
    extra: dict = field(default_factory=dict)


class Backend(Protocol):
    name: str
    model: str

    def stream(self, requests: Iterable[LLMRequest]) -> Iterator[LLMResult]:
        """Yield one result per request as they complete."""
        ...


def make_backend(kind: str, model: str | None, *, base_url: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, max_retries: int = 5, backoff_base: float = 0.5,
                 batch_size: int = 256, engine_args: dict | None = None) -> Backend:
    from compass.errors import CompassError

    if not model:
        raise CompassError(f"--backend {kind} needs --model (a model name the server knows, or a local model "
                           "folder for vllm)")
    if kind == "openai":
        from compass.datagen.openai_backend import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, concurrency=concurrency, timeout=timeout,
                             max_retries=max_retries, backoff_base=backoff_base)
    if kind == "vllm":
        from compass.datagen.vllm_backend import VLLMBackend

        return VLLMBackend(model, batch_size=batch_size, engine_args=engine_args or {})
    raise CompassError(f"--backend {kind!r}: unknown backend; use vllm (offline engine) or openai "
                       "(any OpenAI-compatible server)")
