"""compass's openai backend vs a plain asyncio loop of the `openai` client, same prompts, same concurrency.

    COMPASS_VLLM_VENV=.venv-vllm .venv/bin/python benchmarks/generate_client.py [--n 96] [--concurrency 16]

Starts the real vLLM CPU server with the tiny random model (built here), renders N grounded prompts from a
small catalog, then sends them (a) through `OpenAIBackend.stream` and (b) through `asyncio.gather` of
`client.chat.completions.create` under a semaphore. Runs are interleaved (A B A B) to even out server warmth;
prints requests/s of each and the ratio (target >= 0.9). Also times a full `run_plan` (catalog writes
included) as a third figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.vllm_server import VLLMServer, build_tiny_model  # noqa: E402


def plan(tmp: Path, model: str, n: int, max_tokens: int):
    from conftest import PRODUCTS_TH, write_jsonl

    from compass.catalog.db import Catalog
    from compass.catalog.ingest import ingest_file
    from compass.datagen.backends import Sampling
    from compass.datagen.plan import plan_grounded
    from compass.prompts.library import bundled_library

    cat = Catalog(tmp / "bench.duckdb", create=True)
    ingest_file(cat, write_jsonl(tmp / "th.jsonl", PRODUCTS_TH), "th", "TH", None, "fail", "bench")
    return cat, plan_grounded(cat, bundled_library(), model=model, n=n, sampling=Sampling(0.8, 0.95, max_tokens),
                              compact=True)


def run_compass(url: str, model: str, reqs, concurrency: int) -> float:
    from compass.datagen.openai_backend import OpenAIBackend

    be = OpenAIBackend(model, base_url=url, concurrency=concurrency, timeout=300)
    t0 = time.perf_counter()
    got = sum(1 for r in be.stream(reqs) if r.status == "ok")
    assert got == len(reqs), f"{len(reqs) - got} failed"
    return len(reqs) / (time.perf_counter() - t0)


def run_plain(url: str, model: str, reqs, concurrency: int) -> float:
    import openai

    async def main():
        client = openai.AsyncOpenAI(api_key="EMPTY", base_url=url, timeout=300)
        sem = asyncio.Semaphore(concurrency)

        async def one(r):
            async with sem:
                await client.chat.completions.create(
                    model=model, messages=r.messages, temperature=r.sampling.temperature, top_p=r.sampling.top_p,
                    max_tokens=r.sampling.max_tokens, seed=r.seed,
                    response_format={"type": "json_schema", "json_schema": {"name": r.schema_name,
                                                                            "schema": r.schema, "strict": True}})

        t0 = time.perf_counter()
        await asyncio.gather(*(one(r) for r in reqs))
        await client.close()
        return len(reqs) / (time.perf_counter() - t0)

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    venv = os.environ.get("COMPASS_VLLM_VENV") or str(REPO / ".venv-vllm")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = str(build_tiny_model(venv, tmp / "model"))
        cat, planned = plan(tmp, model, args.n, args.max_tokens)
        reqs = [p.request for p in planned]
        with VLLMServer(venv, Path(model), Path(os.environ.get("BENCH_SERVER_LOG") or tmp / "server.log")) as srv:
            run_plain(srv.url, model, reqs[:16], args.concurrency)  # warm-up (not timed)
            a, b = [], []
            for _ in range(args.rounds):
                a.append(run_compass(srv.url, model, reqs, args.concurrency))
                b.append(run_plain(srv.url, model, reqs, args.concurrency))
            from compass.datagen.llm_run import run_plan
            from compass.datagen.openai_backend import OpenAIBackend

            t0 = time.perf_counter()
            res = run_plan(cat, "bench", planned, OpenAIBackend(model, base_url=srv.url,
                                                               concurrency=args.concurrency), progress=False)
            e2e = res["sent"] / (time.perf_counter() - t0)
        cat.close()
    ca, pb = sum(a) / len(a), sum(b) / len(b)
    print(f"requests: {len(reqs)}, concurrency {args.concurrency}, max_tokens {args.max_tokens}, rounds {args.rounds}")
    print(f"compass OpenAIBackend.stream : {ca:7.2f} req/s  (rounds: {', '.join(f'{x:.2f}' for x in a)})")
    print(f"plain asyncio openai loop    : {pb:7.2f} req/s  (rounds: {', '.join(f'{x:.2f}' for x in b)})")
    print(f"ratio compass / plain        : {ca / pb:7.3f}  (target >= 0.9)")
    print(f"compass run_plan (+ catalog) : {e2e:7.2f} req/s  ratio to plain {e2e / pb:.3f}")


if __name__ == "__main__":
    main()
