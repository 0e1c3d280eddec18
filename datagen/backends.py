"""LLM backends behind one small interface: `stream(requests) -> iterator of results`.

A backend takes requests (messages, JSON schema, sampling, seed) and yields one `LLMResult` per request as
each completes, in any order. It never raises for one bad request: a request that cannot be answered comes
back with status `failed` and a reason, so the runner can account for every request it sent.

- `OpenAIBackend`: any OpenAI-compatible server through the async `openai` client (see `openai_backend.py`).
- `VLLMBackend`: the offline `vllm.LLM` engine, batched (see `vllm_backend.py`).

Each backend registers in `backends` with its own pydantic `Options` model (what only it needs: a URL and
retries, or engine arguments); `make_backend(name, model, options)` validates the options against it. Adding a
backend = one module with `@backends.register` on the class, and one line in `BACKEND_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from compass.registry import Registry


class Sampling(BaseModel):
    """Sampling parameters; part of every request id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.8, description="Sampling temperature.")
    top_p: float = Field(0.95, description="Sampling top-p.")
    max_tokens: int = Field(256, description="Most tokens per answer.")

    def __init__(self, temperature: float = 0.8, top_p: float = 0.95, max_tokens: int = 256, **kw: Any):
        super().__init__(temperature=temperature, top_p=top_p, max_tokens=max_tokens, **kw)

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


# Modules whose backend classes register themselves (imported on the first lookup; a missing one raises).
BACKEND_MODULES = ["compass.datagen.openai_backend", "compass.datagen.vllm_backend"]


def _load() -> None:
    for mod in BACKEND_MODULES:  # cheap: the backends import their clients (openai, vllm) only when used
        importlib.import_module(mod)


class BackendRegistry(Registry):
    """Looks up after importing BACKEND_MODULES only: not every stage module (`compass.registry.load_all`), whose
    extras (datasketch, fastText) the vLLM venv that runs `generate --backend vllm` does not have."""

    def get(self, key: str) -> type:
        _load()
        if key not in self._items:
            from compass.errors import CompassError

            raise CompassError(self.unknown(key))
        return self._items[key]


backends: Registry[type] = BackendRegistry("LLM backend")


def backend_class(name: str) -> type:
    _load()
    return backends.get(name)


def backend_options(name: str, options: BaseModel | dict | None = None) -> BaseModel:
    """`options` validated against backend `name`'s Options model (unknown keys are refused)."""
    cls = backend_class(name)
    if isinstance(options, cls.Options):
        return options
    return cls.Options.model_validate(dict(options or {}) if not isinstance(options, BaseModel)
                                      else options.model_dump())


def make_backend(name: str, model: str | None, options: BaseModel | dict | None = None) -> Backend:
    from compass.errors import CompassError

    if not model:
        raise CompassError(f"--backend {name} needs --model (a model name the server knows, or a local model "
                           "folder for vllm)")
    cls = backend_class(name)
    return cls.from_options(model, backend_options(name, options))
