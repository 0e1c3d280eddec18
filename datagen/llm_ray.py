"""LLM generation on Ray: the `generate` stage's own loop (`llm_run.execute_stream`), answers from Ray workers.

`compass.run(cat, "generate", config, executor="ray")`, `compass run RECIPE --executor ray` (a recipe's generate
step) and `COMPASS_EXECUTOR=ray compass generate ...` come here. The driver does what it does locally: it plans
the requests (the same request ids), skips the ones the catalog already answered (resume), runs the too-long
context check, and parses and commits the answers a chunk at a time through the stage's `write` (one
transaction per chunk, content-hash keys: the catalog gets the rows the local executor writes). Only where the
answers come from changes:

- **Any backend but an offline vLLM engine** (`--backend openai` and an OpenAI-compatible server): the pending
  requests go out as a Ray dataset, `batch_rows` requests per block, through `map_batches` on an actor pool
  (`AnswerWorker`). Each actor opens the backend once, the existing async client with its retries and its
  `concurrency` requests in flight, answers a block and returns it as RESULT_SCHEMA rows in plan order. Ray
  Data rather than a bare `ray.util.ActorPool`: it streams blocks with backpressure (a million-request plan is
  never all at the server, though the requests go to the object store up front, 1-2 KB each), returns them in
  order (`preserve_order`), and restarts a killed actor and retries its block (`max_restarts` /
  `max_task_retries`), the knobs compass.ray_executor uses. The API key is never in a
  task's arguments: each worker reads OPENAI_API_KEY / COMPASS_API_KEY from its own environment at call time
  (a local cluster inherits the driver's; on a cluster, set it where `ray start` runs).
- **`--backend vllm` with vLLM importable in the driver's environment and GPUs in the cluster**: `ray.data.llm`
  (`vLLMEngineProcessorConfig` + `build_processor`, one engine replica per GPU) does the batching; its rows are
  mapped back to RESULT_SCHEMA (`vllm_result`). NOT RUN END TO END: the machine this was written on has no GPU
  and its vLLM venv has no Ray. Its tests cover the processor config it builds and the row mapping only.
  Without GPUs (or without vLLM) `--backend vllm` says so in one line and runs on the driver, as locally.

A killed worker: Ray restarts the actor and redoes its block (the block's answers are replaced, never doubled;
its requests reach the server again). A killed driver: the committed chunks are answered request ids, which
the next run does not send.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from typing import Any

import polars as pl

from compass.catalog.db import Catalog, Run
from compass.datagen.backends import LLMRequest, LLMResult, Sampling, backend_options, make_backend
from compass.datagen.llm_run import RESULT_SCHEMA, LLMGenerate, _result, execute_stream, result_frame
from compass.runner import RunSummary

ACTOR_CPUS = 0.25     # the actors wait on the network: a CPU each would leave none for Ray Data's own tasks
REQUEST_COLUMNS = ("request_id", "messages", "schema", "sampling", "seed", "schema_name")
# ray.data.llm's engine stage writes its own integer `request_id` over a column of that name: ours travels as this.
ID_COLUMN = "compass_request_id"
VLLM_KEEP = (ID_COLUMN, "generated_text", "num_input_tokens", "num_generated_tokens", "time_taken_llm", "max_tokens")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def request_table(requests: list[LLMRequest]) -> Any:
    """Requests as an Arrow table (messages, schema and sampling as JSON text: one type for every template)."""
    import pyarrow as pa

    return pa.table({
        "request_id": [r.request_id for r in requests],
        "messages": [json.dumps(r.messages, ensure_ascii=False) for r in requests],
        "schema": [json.dumps(r.schema, ensure_ascii=False) for r in requests],
        "sampling": [json.dumps(r.sampling.as_dict()) for r in requests],
        "seed": pa.array([r.seed for r in requests], pa.int64()),
        "schema_name": [r.schema_name for r in requests]})


def requests_of(table: Any) -> list[LLMRequest]:
    cols = {c: table.column(c).to_pylist() for c in REQUEST_COLUMNS}
    return [LLMRequest(rid, json.loads(m), json.loads(s), Sampling(**json.loads(sp)), int(seed), name)
            for rid, m, s, sp, seed, name in zip(*(cols[c] for c in REQUEST_COLUMNS))]


class AnswerWorker:
    """One per Ray actor: the backend, opened once from (name, model, options), which hold no secret; each call
    answers one block of requests and returns RESULT_SCHEMA rows in the block's order."""

    def __init__(self, backend: str, model: str, options: dict):
        self.backend = make_backend(backend, model, options)

    def answer(self, requests: list[LLMRequest]) -> Iterator[LLMResult]:
        return self.backend.stream(requests)

    def __call__(self, block: Any) -> Any:
        requests = requests_of(block)
        order = {r.request_id: i for i, r in enumerate(requests)}
        # The backend yields in completion order; plan order makes the driver's chunks the same on every run.
        results = sorted(self.answer(requests), key=lambda r: order[r.request_id])
        return result_frame(results).to_arrow()


def actor_answers(stage: LLMGenerate, requests: list[LLMRequest], *, batch_rows: int, actors: int | None = None,
                  worker: type[AnswerWorker] = AnswerWorker) -> Iterator[LLMResult]:
    """The requests answered by a pool of `worker` actors (one per CPU, at most one per block), in order."""
    import ray

    from compass.ray_executor import MAX_RETRIES, _user_error

    if not requests:
        return
    blocks = [ray.put(request_table(requests[i:i + batch_rows])) for i in range(0, len(requests), batch_rows)]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    pool = actors or max(1, min(cpus, len(blocks)))
    c = stage.config
    ds = ray.data.from_arrow_refs(blocks).map_batches(
        worker, fn_constructor_kwargs={"backend": c.backend, "model": c.model, "options": dict(c.options)},
        batch_size=None, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=ACTOR_CPUS,
        max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in pl.from_arrow(batch).cast(RESULT_SCHEMA).iter_rows(named=True):
                yield _result(row)
    except Exception as e:
        raise _user_error(e) from None


# --- ray.data.llm (vLLM engine processors). Not run end to end here: see the module docstring. ---------------

def processor_config(stage: LLMGenerate, gpus: int) -> Any:
    """The `vLLMEngineProcessorConfig` for the stage: one engine replica per GPU (a fixed pool of `gpus`), the
    backend's batch size and engine arguments, and errors kept per row (a failed request, not a failed run)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    o = backend_options("vllm", stage.config.options)
    return vLLMEngineProcessorConfig(
        model_source=stage.config.model, engine_kwargs={"seed": 0, **o.engine_args}, concurrency=(gpus, gpus),
        batch_size=o.batch_size, should_continue_on_error=True)


def vllm_preprocess(row: dict) -> dict:
    """One request row -> what ray.data.llm's chat-template and engine stages read (as VLLMBackend.params)."""
    sampling = json.loads(row["sampling"])
    return {"messages": json.loads(row["messages"]), "max_tokens": sampling["max_tokens"],
            "sampling_params": {**sampling, "seed": int(row["seed"]),
                                # JSON text, not a dict: every row has one type whatever its template's schema.
                                "structured_outputs": {"json": row["schema"], "disable_any_whitespace": True}}}


def vllm_postprocess(row: dict) -> dict:
    return {k: row.get(k) for k in VLLM_KEEP}


def vllm_result(row: dict) -> LLMResult:
    """A processor output row as the result the local vLLM backend would give. ray.data.llm reports no finish
    reason: an answer that used all of max_tokens is taken as cut (`length`), which is what the parser needs."""
    rid = row[ID_COLUMN]
    err = row.get("__inference_error__") or ""
    if err:
        from compass.datagen.openai_backend import scrub_message

        return LLMResult(rid, "failed", error=f"engine:{err.splitlines()[0][:120]}",
                         extra={"error_message": scrub_message(err)})
    done = int(row.get("num_generated_tokens") or 0)
    took = row.get("time_taken_llm")
    return LLMResult(rid, "ok", text=row.get("generated_text") or "",
                     finish_reason="length" if done >= int(row["max_tokens"]) else "stop",
                     prompt_tokens=row.get("num_input_tokens"), completion_tokens=done,
                     latency_ms=float(took) * 1000.0 if took is not None and took >= 0 else None)


def vllm_answers(stage: LLMGenerate, requests: list[LLMRequest], gpus: int) -> Iterator[LLMResult]:
    import ray
    from ray.data.llm import build_processor

    from compass.ray_executor import _user_error

    if not requests:
        return
    table = request_table(requests).rename_columns([ID_COLUMN, *REQUEST_COLUMNS[1:]])
    processor = build_processor(processor_config(stage, gpus), preprocess=vllm_preprocess,
                                postprocess=vllm_postprocess)
    try:
        for row in processor(ray.data.from_arrow(table)).iter_rows():
            yield vllm_result(row)
    except Exception as e:
        raise _user_error(e) from None


# --- the executor ---------------------------------------------------------------------------------------------

def _vllm_gpus(stage: LLMGenerate, ray: Any) -> int | None:
    """GPUs for ray.data.llm, or None (said in one line) when `--backend vllm` must run on the driver."""
    if importlib.util.find_spec("vllm") is None:
        _say("stage generate: --backend vllm on Ray needs vLLM in this environment "
             "(pip install 'compass-embed[ray-llm]'): running on the driver")
        return None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        _say("stage generate: the Ray cluster has no GPU for vLLM engine replicas: running on the driver")
        return None
    return gpus


def execute_ray_stream(cat: Catalog, stage: LLMGenerate, rec: Run | None, *, langs: list[str] | None = None,
                       progress: bool = True, address: str | None = None,
                       worker: type[AnswerWorker] = AnswerWorker) -> RunSummary:
    """`execute_stream` with the answers from Ray (see the module docstring); Ray starts only when something
    is left to send."""
    from compass.ray_executor import connect

    def answers(st: LLMGenerate) -> Iterator[LLMResult]:
        yield from st.skipped_results()
        todo = [p.request for p in st.to_send()]
        if not todo:
            return
        ray = connect(address)
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        ray.data.DataContext.get_current().enable_progress_bars = False   # the stage's own bar counts requests
        if st.config.backend == "vllm":
            gpus = _vllm_gpus(st, ray)
            yield from (vllm_answers(st, todo, gpus) if gpus else st.backend.stream(todo))
            return
        yield from actor_answers(st, todo, batch_rows=max(1, st.config.write_every), worker=worker)

    return execute_stream(cat, stage, rec, langs=langs, progress=progress, answers=answers, where=" on Ray")


__all__ = ["AnswerWorker", "actor_answers", "execute_ray_stream", "processor_config", "vllm_result"]
