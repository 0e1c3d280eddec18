"""The `vllm` backend: the offline engine `vllm.LLM`, batched, structured output by JSON schema.

Each request carries its own `SamplingParams` (its seed and its schema), so one `LLM.chat` call serves a batch
of mixed templates. vLLM spawns worker processes: call it from a script guarded by
`if __name__ == "__main__":` (`python -m compass` and the `compass` console script are).

`latency_ms` of a result is its batch's wall time: the engine runs the batch as one, so per-request latency
is not observable offline.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from compass.datagen.backends import LLMRequest, LLMResult, backends
from compass.errors import CompassError


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, description="Prompts per engine call.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM arguments, e.g. "
                                        "{\"dtype\": \"float32\", \"max_model_len\": 1024}.")


@backends.register
class VLLMBackend:
    name = "vllm"
    Options = VLLMOptions

    @classmethod
    def from_options(cls, model: str, o: VLLMOptions) -> VLLMBackend:
        return cls(model, batch_size=o.batch_size, engine_args=o.engine_args)

    def __init__(self, model: str, *, batch_size: int = 256, engine_args: dict | None = None,
                 structured: bool = True):
        self.model, self.batch_size, self.structured = model, batch_size, structured
        self.engine_args = dict(engine_args or {})
        self._llm = None

    def engine(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise CompassError("--backend vllm needs the vllm package: `pip install vllm` (GPU) or build the "
                                   "CPU venv with `bash tests/support/setup_vllm.sh .venv-vllm` and run "
                                   "`.venv-vllm/bin/python -m compass generate ...`") from None
            self._llm = LLM(model=self.model, seed=0, **self.engine_args)
        return self._llm

    def params(self, req: LLMRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        # Compact JSON: a model is otherwise free to spend its max_tokens on whitespace.
        so = StructuredOutputsParams(json=req.schema, disable_any_whitespace=True) if self.structured else None
        return SamplingParams(temperature=req.sampling.temperature, top_p=req.sampling.top_p,
                              max_tokens=req.sampling.max_tokens, seed=req.seed, structured_outputs=so)

    def _chat(self, batch: list[LLMRequest]) -> list[LLMResult]:
        llm = self.engine()
        t0 = time.perf_counter()
        outs = llm.chat([r.messages for r in batch], [self.params(r) for r in batch], use_tqdm=False)
        ms = (time.perf_counter() - t0) * 1000.0
        results = []
        for r, o in zip(batch, outs):
            c = o.outputs[0]
            results.append(LLMResult(r.request_id, "ok", text=c.text, finish_reason=c.finish_reason,
                                     prompt_tokens=len(o.prompt_token_ids or []), completion_tokens=len(c.token_ids),
                                     latency_ms=ms))
        return results

    def stream(self, requests: Iterable[LLMRequest]) -> Iterator[LLMResult]:
        batch: list[LLMRequest] = []
        for req in requests:
            batch.append(req)
            if len(batch) >= self.batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[LLMRequest]) -> list[LLMResult]:
        try:
            return self._chat(batch)
        except ValueError:
            # The engine rejects a whole batch for one bad request (a prompt longer than max_model_len...):
            # run them one by one so only the bad ones fail.
            out = []
            for r in batch:
                try:
                    out.extend(self._chat([r]))
                except ValueError as e:
                    out.append(LLMResult(r.request_id, "failed", error=f"engine:{str(e).splitlines()[0][:120]}"))
            return out
