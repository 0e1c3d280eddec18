"""Embed texts with vLLM's offline engine: `VLLM_PYTHON vllm_worker.py JOB.json OUT.json`.

Runs inside the Python that has vLLM (its own venv: vLLM pins torch/transformers), so it imports neither compass
nor sentence-transformers and is run by file path. JOB: {"models": [{"name", "path"}], "texts": [...],
"dtype": "float32", "max_model_len": null}. OUT: {"vllm": version, "device": ..., "models": {name: {"embeddings":
[[...]], "max_model_len": n, "seconds": s}}} or {"error": "..."} with the exception text, for one clear line upstream.

Texts longer than the model's limit are truncated to it (`truncate_prompt_tokens=-1`), as sentence-transformers
does; vLLM's default is to refuse them.
"""

from __future__ import annotations

import json
import sys
import time


def _llm(path: str, dtype: str, max_model_len: int | None):
    from vllm import LLM

    kw = dict(model=path, dtype=dtype, enforce_eager=True, gpu_memory_utilization=0.3)
    if max_model_len:
        kw["max_model_len"] = max_model_len
    try:
        return LLM(runner="pooling", **kw)  # vLLM >= 0.10
    except TypeError:
        return LLM(task="embed", **kw)  # older vLLM


def _embed(llm, texts: list[str]) -> list[list[float]]:
    try:  # vLLM >= 0.2x: truncation is a tokenization argument (-1: to the model's limit, special tokens kept)
        outs = llm.embed(texts, tokenization_kwargs={"truncate_prompt_tokens": -1}, use_tqdm=False)
    except TypeError:  # older vLLM: an argument of embed()
        outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    return [list(map(float, o.outputs.embedding)) for o in outs]


def main(job_path: str, out_path: str) -> int:
    job = json.load(open(job_path, encoding="utf-8"))
    result: dict = {"models": {}}
    try:
        import torch
        import vllm

        result["vllm"] = vllm.__version__
        result["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        for m in job["models"]:
            t0 = time.perf_counter()
            llm = _llm(m["path"], job.get("dtype", "float32"), job.get("max_model_len"))
            emb = _embed(llm, job["texts"])
            result["models"][m["name"]] = {"embeddings": emb, "seconds": round(time.perf_counter() - t0, 1),
                                           "max_model_len": llm.llm_engine.model_config.max_model_len}
            del llm
    except Exception as e:  # reported as data: the caller turns it into one CompassError line
        result["error"] = f"{type(e).__name__}: {e}".strip()[:2000]
    json.dump(result, open(out_path, "w", encoding="utf-8"))
    return 1 if "error" in result else 0


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which re-imports __main__
    sys.exit(main(sys.argv[1], sys.argv[2]))
