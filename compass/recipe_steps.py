"""One Python function per pipeline step, for notebooks and for `compass run RECIPE`.

    from compass import recipe_steps as steps
    steps.ingest("c.duckdb", samples=True)
    steps.filter("c.duckdb", stages="langid,quality")      # returns the run records the step opened

A step is the `compass` command of the same name, called as a function: its options are the command's flags
(`--per-example 3` is `per_example=3`, `--json F` is `json="F"`), and it records lineage exactly as the command
does (a `runs` row per command, plus the rows it writes). Why call the commands rather than the library below
them: several steps (structured generation, the filter chain, splits, negative-set resolution) still orchestrate
inside their command while they move to the stage contract (compass.stage, compass.runner). The commands keep
their flags through that move, so these functions, and every recipe, follow the new stages with no change here.

Every registered command can be a step (merge, export-fp8, export, stats, and `report` once it exists); the
ones a recipe usually chains are listed in PIPELINE, in their natural order.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.errors import CompassError

PIPELINE = ("ingest", "generate", "filter", "split", "mine", "train", "eval", "merge", "export-fp8", "publish",
            "export", "report")
NOT_STEPS = frozenset({"init", "run", "sql", "check", "models", "prompts"})  # tools, not pipeline steps


@dataclass(frozen=True)
class Option:
    key: str            # the recipe key: the long flag without dashes, '-' -> '_' (an argument: its name)
    param: str          # the Python parameter of the command function
    annotation: Any     # the type (typing, Annotated stripped)
    default: Any        # inspect.Parameter.empty when required
    flag: str | None    # '--per-example' (None: a positional argument)
    is_bool_flag: bool = False


@dataclass(frozen=True)
class Command:
    name: str
    callback: Callable[..., Any]
    options: dict[str, Option]
    takes_catalog: bool
    help: str


@functools.cache
def commands() -> dict[str, Command]:
    """Every `compass` command usable as a step, by name (built from the CLI's registrations, once)."""
    import typer.main
    import typer.models

    from compass.cli import app

    group = typer.main.get_command(app)
    out: dict[str, Command] = {}
    for info in app.registered_commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        if name in NOT_STEPS or name not in group.commands:
            continue
        click_cmd = group.commands[name]
        sig = inspect.signature(info.callback)
        try:
            hints = typing.get_type_hints(info.callback)
        except (NameError, TypeError):
            hints = {}
        options = {}
        for p in click_cmd.params:
            default = sig.parameters[p.name].default if p.name in sig.parameters else None
            if isinstance(default, typer.models.ParameterInfo):   # old style `x: int = typer.Option(3)`
                default = inspect.Parameter.empty if default.default is ... else default.default
            if p.name in ("catalog", "help") or p.name not in sig.parameters:
                continue
            longs = [o for o in p.opts if o.startswith("--")]
            key = (longs[0][2:] if longs else p.name).replace("-", "_")
            ann = hints.get(p.name, sig.parameters[p.name].annotation)   # a built __signature__ has no hints
            if typing.get_origin(ann) is typing.Annotated:
                ann = typing.get_args(ann)[0]
            options[key] = Option(key, p.name, Any if ann is inspect.Parameter.empty else ann, default,
                                  longs[0] if longs else None, bool(getattr(p, "is_flag", False)))
        out[name] = Command(name, info.callback, options, "catalog" in sig.parameters,
                            (inspect.getdoc(info.callback) or "").split("\n")[0])
    return out


def command(name: str) -> Command:
    cmds = commands()
    if name not in cmds:
        import difflib

        near = difflib.get_close_matches(name, list(cmds), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise CompassError(f"unknown step {name!r}{hint}: use one of {', '.join(sorted(cmds))}")
    return cmds[name]


def call(name: str, catalog: str | Path | None, **options: Any) -> list[dict]:
    """Run command `name` with `options` (recipe keys); returns the run records it opened (id, command, status,
    summary), oldest first: the step's lineage."""
    cmd = command(name)
    unknown = [k for k in options if k not in cmd.options]
    if unknown:
        import difflib

        near = difflib.get_close_matches(unknown[0], list(cmd.options), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise CompassError(f"{name}: unknown option {unknown[0]!r}{hint}: use one of {', '.join(cmd.options)}")
    missing = [o.key for o in cmd.options.values() if o.key not in options and o.default is inspect.Parameter.empty]
    if missing:
        raise CompassError(f"{name}: {missing[0]!r} is required")
    # Every parameter is passed: a command declared with `x = typer.Option(3)` (or a built signature) has no
    # usable Python default, only typer's.
    kwargs = {o.param: options.get(o.key, o.default) for o in cmd.options.values()}
    if cmd.takes_catalog:
        kwargs["catalog"] = Path(catalog) if catalog is not None else None
    before = _run_ids(catalog)
    cmd.callback(**kwargs)
    return _new_runs(catalog, before)


def _run_ids(catalog: str | Path | None) -> set[str]:
    from compass.catalog.db import Catalog, catalog_path

    if not catalog_path(catalog).exists():
        return set()
    with Catalog(catalog) as cat:
        return {r["id"] for r in cat.query("SELECT id FROM runs")}


def _new_runs(catalog: str | Path | None, before: set[str]) -> list[dict]:
    import json

    from compass.catalog.db import Catalog, catalog_path

    if not catalog_path(catalog).exists():
        return []
    with Catalog(catalog) as cat:
        rows = cat.query("SELECT id, command, status, summary FROM runs ORDER BY started_at, id")
    out = []
    for r in rows:
        if r["id"] in before:
            continue
        summary = r["summary"]
        out.append({**r, "summary": json.loads(summary) if isinstance(summary, str) else summary})
    return out


def init(catalog: str | Path | None = None) -> Path:
    """Create the catalog, or upgrade an older one in place; returns its path."""
    from compass.catalog.db import init_catalog

    return init_catalog(catalog)[0]


def _step(name: str) -> Callable[..., list[dict]]:
    def step(catalog: str | Path | None = None, **options: Any) -> list[dict]:
        return call(name, catalog, **options)

    step.__name__ = step.__qualname__ = name.replace("-", "_")
    step.__doc__ = f"`compass {name}` as a function: options are its flags (see `compass {name} --help`)."
    return step


# `filter` and `eval` are the steps' names; they shadow the builtins only as attributes of this module.
ingest = _step("ingest")
generate = _step("generate")
filter = _step("filter")
split = _step("split")
mine = _step("mine")
train = _step("train")
eval = _step("eval")
merge = _step("merge")
export_fp8 = _step("export-fp8")
publish = _step("publish")
export = _step("export")
report = _step("report")
