"""`compass run RECIPE.yaml`: a validated chain of steps that skips what already finished with the same parameters.

A recipe (see recipes/demo.yaml):

    out: demo-out                      # artefact folder; `{out}` in any string expands to it (--out overrides)
    catalog: "{out}/compass.duckdb"    # --catalog overrides
    steps:                             # in order; each is `- KIND: {options}` (options = the command's flags)
      - ingest: {samples: true}
      - split: {test: 0.1, dev: 0.05}
      - train: {out: "{out}/model", max_steps: 100}
      - eval: {id: eval-base, model: minilm}   # `id` names a step when a kind repeats (default: the kind)
    report: "{out}/report.html"        # `compass report` at the end; false: none; a `report` step replaces it

Skipping, like make: each step's key is a hash of its kind, options and the key of the step before it, so a
changed option re-runs that step and every later one. A step is skipped when a finished `recipe:KIND` run record
with its key exists and its outputs (model folder, eval JSON, dataset folder, report) are still there; once one
step runs, every later step runs too (their inputs changed). `--force STEP` runs a step (and so the rest) again;
`--from STEP` runs STEP and everything after it, and leaves earlier steps alone. A finished recipe run again
does nothing and says so.
"""

from __future__ import annotations

import difflib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from compass.errors import CompassError
from compass.ids import params_hash
from compass.recipe_schema import Step, step_model, yaml_lines

REPORT_FILE = "{out}/report.html"


class RecipeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: str = "compass-out"
    catalog: str = "{out}/compass.duckdb"
    steps: list[dict[str, Any]] = Field(min_length=1)
    report: str | bool = REPORT_FILE


@dataclass
class Recipe:
    path: Path
    out: Path
    catalog: Path
    steps: list[Step]
    report: Path | None
    text: str = ""

    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]


def _expand(value: Any, out: str) -> Any:
    if isinstance(value, str):
        return value.replace("{out}", out)
    if isinstance(value, list):
        return [_expand(v, out) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, out) for k, v in value.items()}
    return value


def _where(path: Path, lines: dict[tuple, int], loc: tuple) -> str:
    """'file:line: steps[2].mine.per_exmple' for a location in the recipe (line of the nearest known parent)."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            line = f":{lines[loc[:n]]}"
            break
    else:
        line = ""
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{path}{line}: {dotted}" if dotted else f"{path}{line}"


def _first_error(path: Path, lines: dict[tuple, int], e: ValidationError, prefix: tuple,
                 valid: list[str]) -> CompassError:
    err = e.errors()[0]
    loc = prefix + tuple(err["loc"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        hint = f" (did you mean {near[0]!r}?)" if near else f": use one of {', '.join(valid)}"
        return CompassError(f"{_where(path, lines, loc)}: unknown key {key!r}{hint}")
    if err["type"] == "missing":
        return CompassError(f"{_where(path, lines, loc)}: missing (required)")
    return CompassError(f"{_where(path, lines, loc)}: {err['msg']} (got {err.get('input')!r})")


def load(path: str | Path, out: str | Path | None = None, catalog: str | Path | None = None) -> Recipe:
    """Read and validate a recipe; CompassError naming file, line and key on the first problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompassError(f"recipe {path}: no such file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CompassError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML "
                           f"({getattr(e, 'problem', e)}): fix the syntax") from None
    if not isinstance(data, dict):
        raise CompassError(f"{path}: expected a mapping with keys out, catalog, steps, report")
    lines = yaml_lines(text)
    try:
        top = RecipeFile(**data)
    except ValidationError as e:
        raise _first_error(path, lines, e, (), list(RecipeFile.model_fields)) from None
    out_s = str(out) if out is not None else top.out
    steps: list[Step] = []
    for i, entry in enumerate(top.steps):
        if len(entry) != 1:
            raise CompassError(f"{_where(path, lines, ('steps', i))}: a step is one `KIND: {{options}}` mapping, "
                               f"got keys {', '.join(map(str, entry))}")
        (kind, opts), = entry.items()
        opts = dict(opts or {})
        if not isinstance(opts, dict):
            raise CompassError(f"{_where(path, lines, ('steps', i, kind))}: options must be a mapping")
        step_id = str(opts.pop("id", kind))
        model = step_model(kind, where=_where(path, lines, ("steps", i, kind)))
        try:
            cfg = model(**_expand(opts, out_s))
        except ValidationError as e:
            keys = [f.alias or n for n, f in model.model_fields.items()] + ["id"]
            raise _first_error(path, lines, e, ("steps", i, kind), keys) from None
        if step_id in [s.id for s in steps]:
            raise CompassError(f"{_where(path, lines, ('steps', i, kind))}: a second {step_id!r} step: give it an "
                               f"`id:` of its own")
        steps.append(Step(step_id, kind, cfg))
    if any(s.kind == "report" for s in steps) and "report" not in data:
        top.report = False          # the recipe places its own report step: no second one at the end
    report = None if top.report is False else Path(_expand(REPORT_FILE if top.report is True else top.report,
                                                          out_s))
    cat = Path(catalog) if catalog is not None else Path(_expand(top.catalog, out_s))
    return Recipe(path, Path(out_s), cat, steps, report, text)


# -- running -------------------------------------------------------------------------------------------------

@dataclass
class StepResult:
    id: str
    kind: str
    key: str
    action: str          # ran | skipped | failed
    seconds: float = 0.0
    cpu_seconds: float = 0.0   # this process and its children: comparable across machines under other load
    why: str = ""
    runs: list[dict] = field(default_factory=list)


def _cpu() -> float:
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def step_key(step: Step, before: str) -> str:
    return params_hash({"kind": step.kind, "params": step.params(), "after": before})


def _done(catalog: Path, kind: str, key: str) -> str | None:
    from compass.catalog.db import Catalog
    from compass.runner import finished_run

    with Catalog(catalog) as cat:
        return finished_run(cat, f"recipe:{kind}", key)


def _record(catalog: Path, recipe: Recipe, res: StepResult, started: Any, error: str | None = None) -> None:
    """The step's own run record: what `compass run` skips by (command recipe:KIND, config.params_hash)."""
    import secrets

    from compass import __version__
    from compass.catalog.db import Catalog, _now
    from compass.ids import canonical_json

    step = next(s for s in recipe.steps if s.id == res.id) if res.kind != "report" else None
    config = {"recipe": str(recipe.path), "step": res.id, "kind": res.kind, "params_hash": res.key,
              "params": step.params() if step else {"out": str(recipe.report)}}
    summary = {"seconds": res.seconds, "cpu_seconds": res.cpu_seconds, "runs": [r["id"] for r in res.runs]}
    if error:
        summary["error"] = error
    with Catalog(catalog) as cat, cat.transaction() as con:
        con.execute("INSERT INTO runs (id, command, config, compass_version, started_at, finished_at, status, "
                    "summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [f"run-{started:%Y%m%d%H%M%S}-{secrets.token_hex(3)}", f"recipe:{res.kind}",
                     canonical_json(config), __version__, started, _now(), "failed" if error else "ok",
                     canonical_json(summary)])


def _clear_model(folder: Path) -> None:
    """A model folder compass trained (it holds compass_train.json) is replaced when its step runs again:
    `compass train` refuses a finished folder. Anything else is left to train's own checks."""
    if (folder / "compass_train.json").is_file() and (folder / "modules.json").is_file():
        shutil.rmtree(folder)


def run(path: str | Path, *, out: str | Path | None = None, catalog: str | Path | None = None,
        from_step: str | None = None, force: list[str] | tuple[str, ...] = (), dry_run: bool = False,
        echo: Callable[[str], None] = print, executor: str = "local", address: str | None = None) -> list[StepResult]:
    """Run a recipe; returns what happened to each step (and the report). See the module docstring.

    `executor="ray"` runs every shardable stage the steps reach on Ray (at `address`; see compass.ray_executor):
    the same catalog, so step keys and skipping do not depend on it."""
    from compass.runner import use_executor

    with use_executor(executor, address):
        if executor == "ray" and not dry_run:
            from compass.ray_executor import connect

            connect(address)    # Ray missing or an address that does not answer: said before any step runs
        return _run(path, out=out, catalog=catalog, from_step=from_step, force=force, dry_run=dry_run, echo=echo)


def _run(path: str | Path, *, out: str | Path | None, catalog: str | Path | None, from_step: str | None,
         force: list[str] | tuple[str, ...], dry_run: bool, echo: Callable[[str], None]) -> list[StepResult]:
    from compass.catalog.db import _now, init_catalog
    from compass.recipe_steps import call

    recipe = load(path, out, catalog)
    ids = recipe.step_ids() + (["report"] if recipe.report else [])
    for name in [from_step, *force]:
        if name is not None and name not in ids:
            near = difflib.get_close_matches(name, ids, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise CompassError(f"no step {name!r} in {recipe.path}{hint}: steps are {', '.join(ids)}")
    start_at = ids.index(from_step) if from_step else None
    if not dry_run:
        recipe.out.mkdir(parents=True, exist_ok=True)
        recipe.catalog.parent.mkdir(parents=True, exist_ok=True)
        init_catalog(recipe.catalog)
    results: list[StepResult] = []
    key, dirty = "", False
    for i, step in enumerate(recipe.steps):
        key = step_key(step, key)
        res = StepResult(step.id, step.kind, key, "skipped")
        if start_at is not None and i < start_at:
            res.why = f"before --from {from_step}"
        elif start_at is not None or step.id in force:
            res.action, res.why = "ran", "--from" if start_at is not None else "--force"
        elif dirty:
            res.action, res.why = "ran", "an earlier step ran"
        elif not recipe.catalog.exists() or not _done(recipe.catalog, step.kind, key):
            res.action, res.why = "ran", "not finished with these parameters"
        elif missing := [str(p) for p in step.outputs() if not p.exists()]:
            res.action, res.why = "ran", f"output missing: {missing[0]}"
        else:
            res.why = "finished with these parameters"
        results.append(res)
        if res.action == "skipped":
            continue
        dirty = True
        echo(f"== {step.id}: {' '.join(step.argv())}" + ("" if dry_run else f"   ({res.why})"))
        if dry_run:
            continue
        t0, c0, started = time.perf_counter(), _cpu(), _now()
        if step.kind == "train" and step.options.get("out"):
            _clear_model(Path(step.options["out"]))
        try:
            res.runs = call(step.kind, recipe.catalog, **step.options)
        except BaseException as e:
            res.action, res.seconds = "failed", round(time.perf_counter() - t0, 1)
            res.cpu_seconds = round(_cpu() - c0, 1)
            msg = str(e) if isinstance(e, CompassError) else f"{type(e).__name__}: {e}"
            if not isinstance(e, KeyboardInterrupt):
                _record(recipe.catalog, recipe, res, started, error=msg)
            if isinstance(e, CompassError):
                raise CompassError(f"step {step.id} ({i + 1}/{len(recipe.steps)}): {e}") from None
            raise
        res.seconds, res.cpu_seconds = round(time.perf_counter() - t0, 1), round(_cpu() - c0, 1)
        _record(recipe.catalog, recipe, res, started)
    if recipe.report:
        results.append(_report(recipe, params_hash({"report": str(recipe.report), "after": key}), dirty, force,
                               start_at is not None, dry_run, echo))
    _summary(recipe, results, echo, dry_run)
    return results


def _report(recipe: Recipe, key: str, dirty: bool, force, from_given: bool, dry_run: bool, echo) -> StepResult:
    from compass.catalog.db import _now
    from compass.recipe_steps import call, commands

    res = StepResult("report", "report", key, "skipped")
    if "report" not in commands():
        res.why = "compass report is not installed in this version"
        return res
    if not (dirty or "report" in force or from_given) and recipe.report.exists() \
            and _done(recipe.catalog, "report", key):
        res.why = "finished with these parameters"
        return res
    res.action = "ran"
    echo(f"== report: compass report --out {recipe.report}")
    if dry_run:
        return res
    t0, c0, started = time.perf_counter(), _cpu(), _now()
    res.runs = call("report", recipe.catalog, out=recipe.report, artefact=[recipe.path])
    res.seconds, res.cpu_seconds = round(time.perf_counter() - t0, 1), round(_cpu() - c0, 1)
    _record(recipe.catalog, recipe, res, started)
    return res


def _summary(recipe: Recipe, results: list[StepResult], echo, dry_run: bool) -> None:
    ran = [r for r in results if r.action == "ran"]
    if not ran:
        echo(f"nothing to do: every step of {recipe.path} finished with these parameters "
             f"({len(results)} steps; --force STEP or --from STEP runs one again)")
    elif not dry_run:
        total, cpu = sum(r.seconds for r in ran), sum(r.cpu_seconds for r in ran)
        echo("time per step (wall / CPU s): " + ", ".join(f"{r.id} {r.seconds:.0f}/{r.cpu_seconds:.0f}" for r in ran)
             + f"; total {total:.0f} s wall, {cpu:.0f} s CPU")
    if recipe.report and recipe.report.exists() and not any(r.id == "report" and r.action == "ran" for r in results):
        echo(f"report: {recipe.report}")   # (compass report prints it when it runs)
    echo(f"catalog: {recipe.catalog}")


def describe(recipe: Recipe) -> str:
    """The recipe as the commands it runs (for --dry-run and the docs)."""
    return "\n".join(" ".join(s.argv()) for s in recipe.steps)


__all__ = ["Recipe", "StepResult", "describe", "load", "run"]
