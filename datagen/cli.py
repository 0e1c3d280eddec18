"""`compass generate`: the three routes into the catalog."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.errors import CompassError
from compass.langs import parse_langs


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def generate(
    route: Annotated[str, typer.Option(help="grounded (LLM on product context) | translate (LLM) | "
                                            "structured (no LLM, from product fields).")] = "structured",
    langs: LangsOpt = None,
    tasks: Annotated[Optional[str], typer.Option(help="Comma-separated tasks (default: all of the route's). "
                                                      "translate: the source examples' tasks.")] = None,
    personas: Annotated[Optional[str], typer.Option(help="grounded: comma-separated personas (default: all).")] = None,
    n: Annotated[Optional[int], typer.Option("--n", help="Structured: at most N products; grounded: N requests "
                                                        "spread over the grid (default: one per product); "
                                                        "translate: N requests (default: every source x "
                                                        "target).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    backend: Annotated[str, typer.Option(help="LLM routes: vllm (offline engine) | openai (any "
                                              "OpenAI-compatible server).")] = "openai",
    model: Annotated[Optional[str], typer.Option(help="Model name (openai) or local folder / Hub id (vllm).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8000/v1. "
                                                         "Key from OPENAI_API_KEY or COMPASS_API_KEY.")] = None,
    concurrency: Annotated[int, typer.Option(help="openai: requests in flight.")] = 8,
    timeout: Annotated[float, typer.Option(help="openai: seconds per attempt.")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="openai: retries after 429, 5xx, timeouts, dropped "
                                                  "connections.")] = 5,
    backoff: Annotated[float, typer.Option(help="openai: first retry delay in seconds (doubles, with "
                                                "jitter; Retry-After wins).")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="vllm: prompts per engine call.")] = 256,
    engine_args: Annotated[Optional[str], typer.Option(help="vllm: JSON of extra vllm.LLM arguments, e.g. "
                                                            "'{\"dtype\": \"float32\", \"max_model_len\": 1024}'.")] = None,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.8,
    top_p: Annotated[float, typer.Option(help="Sampling top-p.")] = 0.95,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
    compact: Annotated[bool, typer.Option(help="Shorter prompts: no example turns, no description or price "
                                               "(small-context models).")] = False,
    source_langs: Annotated[str, typer.Option(help="translate: languages of the examples to translate.")] = "en",
    templates: Annotated[Optional[Path], typer.Option(help="A templates folder instead of the bundled one.")] = None,
    dry_run: Annotated[bool, typer.Option(help="LLM routes: print requests per cell and a prompt-token "
                                               "estimate; send nothing.")] = False,
    max_model_len: Annotated[Optional[int], typer.Option(help="openai: the model's context in tokens; a prompt "
                                                              "that fills it (no room for an answer) is stored "
                                                              "as reject too_long, unsent (default: from the "
                                                              "server's /v1/models; 0: do not check).")] = None,
    shopper: Annotated[bool, typer.Option(help="structured: shopper-style queries (rules in datagen/rules); "
                                               "--no-shopper keeps 2-4 title words (ablations).")] = True,
    rules: Annotated[Optional[Path], typer.Option(help="structured: a shopper rules folder (generic.yaml + "
                                                       "<lang>.yaml) instead of the bundled one.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Validate the shopper rule files, replay every rule on "
                                                        "its example, and exit.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Turn products into training pairs (anchor, positive, task, class id) in the catalog."""
    lang_list = parse_langs(langs)
    if check:
        from compass.datagen.shopper_check import check_folder

        problems, checked = check_folder(rules, lang_list)
        for p in problems:
            typer.echo(p)
        if problems:
            raise CompassError(f"{len(problems)} shopper rule problems (listed above)")
        console.print(f"shopper rules OK: {checked} rule examples reproduced", highlight=False)
        return
    if route == "structured":
        from compass.datagen.structured_run import run_structured

        with Catalog(catalog) as cat, cat.run("generate", {"route": route, "langs": lang_list, "tasks": tasks,
                                                           "n": n, "seed": seed, "shopper": shopper,
                                                           "rules": str(rules) if rules else None}) as run:
            res = run_structured(cat, run.id, lang_list, _csv(tasks), seed=seed, limit=n, shopper=shopper,
                                 rules_dir=str(rules) if rules else None)
            run.summary.update(res)
        console.print(f"structured route: {res['new_examples']} new examples from {res['products']} products")
        return
    if route not in ("grounded", "translate"):
        raise CompassError(f"--route {route!r}: unknown route: use structured, grounded or translate")
    from compass.datagen.backends import Sampling, make_backend
    from compass.datagen.llm_run import context_check, failure_summary, report_failures, run_plan
    from compass.datagen.plan import dry_run_table, load_tokenizer, plan_grounded, plan_translate
    from compass.prompts.library import bundled_library, load_library

    if n is not None and n < 1:
        raise CompassError("--n must be at least 1")
    try:
        extra = json.loads(engine_args) if engine_args else {}
    except json.JSONDecodeError as e:
        raise CompassError(f"--engine-args is not JSON ({e.msg} at char {e.pos}): pass e.g. "
                           "'{\"dtype\": \"float32\"}'") from None
    if not model:
        raise CompassError(f"--route {route} needs --model (the model name the server knows, or a local folder "
                           "for --backend vllm)")
    lib = load_library(templates) if templates else bundled_library()
    sampling = Sampling(temperature, top_p, max_tokens)
    config = {"route": route, "langs": lang_list, "tasks": tasks, "personas": personas, "n": n, "seed": seed,
              "backend": backend, "model": model, "base_url": base_url, "concurrency": concurrency,
              "sampling": sampling.as_dict(), "compact": compact, "source_langs": source_langs,
              "engine_args": extra, "templates": str(templates) if templates else None}
    with Catalog(catalog, read_only=dry_run) as cat:
        if route == "grounded":
            planned = plan_grounded(cat, lib, model=model, langs=lang_list, personas=_csv(personas),
                                    tasks=_csv(tasks), n=n, seed=seed, sampling=sampling, compact=compact)
        else:
            planned = plan_translate(cat, lib, model=model, source_langs=parse_langs(source_langs) or ["en"],
                                     langs=lang_list, tasks=_csv(tasks), n=n, seed=seed, sampling=sampling,
                                     compact=compact)
        if dry_run:
            rows = dry_run_table(planned, load_tokenizer(model))
            print_table(rows, title=f"dry run: {len(planned)} requests, ~"
                                    f"{sum(r['prompt_tokens_est'] for r in rows)} prompt tokens (nothing sent)")
            return
        be = make_backend(backend, model, base_url=base_url, concurrency=concurrency, timeout=timeout,
                          max_retries=max_retries, backoff_base=backoff, batch_size=batch_size, engine_args=extra)
        limit, counter = context_check(be, model, max_model_len)
        with cat.run("generate", config) as run:
            res = run_plan(cat, run.id, planned, be, max_model_len=limit, count_tokens=counter)
            run.summary.update(res)
        failures = failure_summary(cat, run.id)
    console.print(f"{route} route: {res['requested']} requested, {res['already_answered']} already answered, "
                  f"{res['sent']} sent: {res['ok']} valid, {res['reject']} rejected, {res['failed']} failed "
                  f"after retries; {res['new_examples']} new examples", highlight=False, soft_wrap=True)
    report_failures(res, failures, base_url, limit)


def register(app: typer.Typer) -> None:
    app.command()(generate)
