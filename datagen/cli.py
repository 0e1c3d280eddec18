"""`compass generate`: the three routes into the catalog, a thin layer over the Python API.

The flags are not re-declared here: each comes from a field of a config model (`StructuredConfig`,
`GenerateConfig`, `Sampling`, or a backend's `Options` from the backend registry), which gives its type, default
and help; `FLAGS` only says which field a flag fills. A new backend option becomes a flag by one line there.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.datagen.backends import Sampling
from compass.datagen.generate import GenerateConfig
from compass.datagen.openai_backend import OpenAIOptions
from compass.datagen.structured import StructuredConfig
from compass.datagen.vllm_backend import VLLMOptions
from compass.errors import CompassError
from compass.langs import parse_langs

ROUTES = "grounded (LLM on product context) | translate (LLM) | structured (no LLM, from product fields)."
# flag -> (model, field, help prefix or full help override). Lists are comma-separated on the command line.
FLAGS: dict[str, tuple[type[BaseModel], str, str]] = {
    "tasks": (GenerateConfig, "tasks", "=Comma-separated tasks (default: all of the route's). translate: the "
                                       "source examples' tasks."),
    "personas": (GenerateConfig, "personas", ""),
    "n": (GenerateConfig, "n", "=Structured: at most N products; grounded: N requests spread over the grid "
                               "(default: one per product); translate: N requests (default: every source x "
                               "target)."),
    "seed": (GenerateConfig, "seed", ""),
    "backend": (GenerateConfig, "backend", "LLM routes: "),
    "model": (GenerateConfig, "model", ""),
    "base_url": (OpenAIOptions, "base_url", "openai: "),
    "concurrency": (OpenAIOptions, "concurrency", "openai: "),
    "timeout": (OpenAIOptions, "timeout", "openai: "),
    "max_retries": (OpenAIOptions, "max_retries", "openai: "),
    "backoff": (OpenAIOptions, "backoff", "openai: "),
    "batch_size": (VLLMOptions, "batch_size", "vllm: "),
    "engine_args": (VLLMOptions, "engine_args", "vllm: JSON of "),
    "temperature": (Sampling, "temperature", ""),
    "top_p": (Sampling, "top_p", ""),
    "max_tokens": (Sampling, "max_tokens", ""),
    "compact": (GenerateConfig, "compact", ""),
    "source_langs": (GenerateConfig, "source_langs", ""),
    "templates": (GenerateConfig, "templates", ""),
    "max_model_len": (GenerateConfig, "max_model_len", ""),
    "shopper": (StructuredConfig, "shopper", "structured: "),
    "rules": (StructuredConfig, "rules_dir", "structured: "),
}
BACKEND_FLAGS = {"openai": ("base_url", "concurrency", "timeout", "max_retries", "backoff"),
                 "vllm": ("batch_size", "engine_args")}


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def _param(flag: str, model: type[BaseModel], field: str, help_: str) -> inspect.Parameter:
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    ann = info.annotation
    text = help_[1:] if help_.startswith("=") else help_ + (info.description or "")
    if flag == "model":
        default = None
    if isinstance(default, (list, dict)) or "list" in str(ann) or "dict" in str(ann):
        # Lists are comma-separated, dicts JSON: shown as text, with the default spelt the way it is typed.
        default = ",".join(default) if isinstance(default, list) and default else (None if not default else default)
        ann = Optional[str]
    elif flag in ("templates", "rules"):
        ann = Optional[Path]
    elif default is None:
        ann = Optional[{int: int, float: float}.get(_inner(ann), str)]
    dashed = flag.replace("_", "-")
    opt = typer.Option(default, f"--{dashed}" if not isinstance(default, bool)
                       else f"--{dashed}/--no-{dashed}", help=text, show_default=default is not None)
    return inspect.Parameter(flag, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)


def _inner(ann: Any) -> Any:
    args = [a for a in getattr(ann, "__args__", ()) if a is not type(None)]
    return args[0] if args else ann


def _backend_options(backend: str, kw: dict) -> dict:
    opts: dict[str, Any] = {}
    for flag in BACKEND_FLAGS.get(backend, ()):
        v = kw[flag]
        if flag == "engine_args" and v is not None:
            try:
                v = json.loads(v)
            except json.JSONDecodeError as e:
                raise CompassError(f"--engine-args is not JSON ({e.msg} at char {e.pos}): pass e.g. "
                                   "'{\"dtype\": \"float32\"}'") from None
        if v is not None:
            opts[FLAGS[flag][1]] = v
    return opts


def llm_config(route: str, kw: dict) -> GenerateConfig:
    """The GenerateConfig the flags describe."""
    if not kw["model"]:
        raise CompassError(f"--route {route} needs --model (the model name the server knows, or a local folder "
                           "for --backend vllm)")
    return GenerateConfig(
        route=route, model=kw["model"], tasks=_csv(kw["tasks"]), personas=_csv(kw["personas"]), n=kw["n"],
        seed=kw["seed"], sampling=Sampling(kw["temperature"], kw["top_p"], kw["max_tokens"]),
        compact=kw["compact"], source_langs=parse_langs(kw["source_langs"]) or ["en"],
        templates=str(kw["templates"]) if kw["templates"] else None, backend=kw["backend"],
        options=_backend_options(kw["backend"], kw), max_model_len=kw["max_model_len"])


def _generate(route: str = "structured", langs: Optional[str] = None, dry_run: bool = False, check: bool = False,
              catalog: Optional[Path] = None, **kw: Any) -> None:
    """Turn products into training pairs (anchor, positive, task, class id) in the catalog."""
    lang_list = parse_langs(langs)
    if check:
        from compass.datagen.shopper_check import check_folder

        problems, checked = check_folder(kw["rules"], lang_list)
        for p in problems:
            typer.echo(p)
        if problems:
            raise CompassError(f"{len(problems)} shopper rule problems (listed above)")
        console.print(f"shopper rules OK: {checked} rule examples reproduced", highlight=False)
        return
    if route == "structured":
        from compass.datagen.structured_run import structured

        cfg = StructuredConfig(tasks=_csv(kw["tasks"]), seed=kw["seed"], shopper=kw["shopper"], limit=kw["n"],
                               rules_dir=str(kw["rules"]) if kw["rules"] else None)
        with Catalog(catalog) as cat:
            s = structured(cat, cfg, lang_list)
        console.print(f"structured route: {s.written.get('examples', 0)} new examples from {s.read} products"
                      + (" (every product already processed with these parameters)" if s.nothing_to_do else ""),
                      highlight=False)
        return
    if route not in ("grounded", "translate"):
        raise CompassError(f"--route {route!r}: unknown route: use structured, grounded or translate")
    cfg = llm_config(route, kw)
    from compass.datagen.generate import generate, plan_requests
    from compass.datagen.llm_checks import failure_summary, report_failures

    with Catalog(catalog, read_only=dry_run) as cat:
        if dry_run:
            from compass.datagen.plan import dry_run_table, load_tokenizer

            rows = dry_run_table(plan_requests(cat, cfg, lang_list), load_tokenizer(cfg.model))
            print_table(rows, title=f"dry run: {sum(r['requests'] for r in rows)} requests, ~"
                                    f"{sum(r['prompt_tokens_est'] for r in rows)} prompt tokens (nothing sent)")
            return
        s = generate(cat, cfg, lang_list)
        failures = failure_summary(cat, s.run_id)
    res = s.info
    console.print(f"{route} route: {res['requested']} requested, {res['already_answered']} already answered, "
                  f"{res['sent']} sent: {res['ok']} valid, {res['reject']} rejected, {res['failed']} failed "
                  f"after retries; {res['new_examples']} new examples", highlight=False, soft_wrap=True)
    report_failures(res, failures, cfg.options.get("base_url"), res.get("max_model_len"))


def _signature() -> inspect.Signature:
    P = inspect.Parameter
    params = [P("route", P.KEYWORD_ONLY, default=typer.Option("structured", help=ROUTES), annotation=str),
              P("langs", P.KEYWORD_ONLY, default=None, annotation=LangsOpt)]
    params += [_param(flag, *spec) for flag, spec in FLAGS.items()]
    params += [
        P("dry_run", P.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--dry-run", help="LLM routes: print requests per cell and a prompt-token estimate; send "
                                     "nothing.")),
        P("check", P.KEYWORD_ONLY, annotation=bool, default=typer.Option(
            False, "--check", help="Validate the shopper rule files, replay every rule on its example, and "
                                   "exit.")),
        P("catalog", P.KEYWORD_ONLY, default=None, annotation=CatalogOpt)]
    return inspect.Signature(params)


def generate(**kw: Any) -> None:
    _generate(**kw)


generate.__signature__ = _signature()  # type: ignore[attr-defined]
generate.__doc__ = _generate.__doc__


def register(app: typer.Typer) -> None:
    app.command()(generate)
