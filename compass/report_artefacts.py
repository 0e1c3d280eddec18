"""The run's files the report reads besides the catalog: trained model folders (compass_train.json: loss history,
evaluation, config), `compass eval --json` results, dataset folders (compass_provenance.json), recipes.

Where they are: the paths given, the paths the catalog's runs recorded (train --out, publish --to-dir, the
recipe and step outputs of `compass run`), and eval JSON files beside the catalog (the demo writes them there).
Missing recorded files are skipped: a model folder deleted after the run leaves its section "not run".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compass.errors import CompassError

TRAIN_FILE = "compass_train.json"
PROVENANCE_FILE = "compass_provenance.json"
RECIPE_SUFFIXES = (".yaml", ".yml", ".sh")
MAX_JSON_BYTES = 50_000_000  # a JSON beside the catalog larger than this is not an eval result
# config keys of runs (train --out, publish --to-dir, eval --json, compass run's recipe) that name an artefact
RUN_PATH_KEYS = ("out", "to_dir", "json", "json_out", "recipe")


@dataclass
class Artefacts:
    models: list[dict] = field(default_factory=list)    # {"path", "name", "train": compass_train.json}
    evals: list[dict] = field(default_factory=list)     # {"path", "name", "result": eval JSON}
    datasets: list[dict] = field(default_factory=list)  # {"path", "provenance"}
    recipes: list[dict] = field(default_factory=list)   # {"path", "text"}


def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_eval_result(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("tasks"), dict) and "macro" in doc and "languages" in doc


def _resolve(p: str | Path, catalog: Path) -> Path | None:
    """A path a run recorded: as given (relative to where the command ran, usually here), else beside the catalog."""
    p = Path(p)
    for cand in ([p] if p.is_absolute() else [p, catalog.parent / p, catalog.parent / p.name]):
        if cand.exists():
            return cand.resolve()
    return None


def collect(catalog: Path, runs: list[dict], paths: list[str | Path] = ()) -> Artefacts:
    """Artefacts named by `paths` (model folder, dataset folder, eval JSON, recipe file), by the catalog's runs,
    and eval JSONs beside the catalog. A given path that does not exist is an error; recorded ones are optional."""
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CompassError(f"artefact {path}: no such file or folder (pass a model folder, a dataset folder, "
                               "an eval JSON from `compass eval --json` or a recipe file)")
        found.append(path.resolve())
    for r in runs:
        cfg = r.get("config") if isinstance(r.get("config"), dict) else {}
        # `compass run` records each step as command recipe:KIND with the recipe's path and the step's params
        params = cfg.get("params") if isinstance(cfg.get("params"), dict) else {}
        for v in [cfg.get(k) for k in RUN_PATH_KEYS] + [params.get(k) for k in RUN_PATH_KEYS]:
            if isinstance(v, str) and v:
                hit = _resolve(v, catalog)
                if hit is not None and hit != catalog.resolve():
                    found.append(hit)
    if catalog.parent.is_dir():
        found += sorted(p.resolve() for p in catalog.parent.glob("*.json"))
    art, seen = Artefacts(), set()
    for path in found:
        if path in seen:
            continue
        seen.add(path)
        if path.is_dir() and (path / TRAIN_FILE).exists():
            doc = _read_json(path / TRAIN_FILE)
            if isinstance(doc, dict):
                art.models.append({"path": str(path), "name": path.name, "train": doc})
        elif path.is_dir() and (path / PROVENANCE_FILE).exists():
            doc = _read_json(path / PROVENANCE_FILE)
            if isinstance(doc, dict):
                art.datasets.append({"path": str(path), "provenance": doc})
        elif path.is_file() and path.suffix == ".json":
            doc = _read_json(path)
            if is_eval_result(doc):
                art.evals.append({"path": str(path), "name": path.stem, "result": doc})
            elif path in [Path(p).resolve() for p in paths]:
                raise CompassError(f"artefact {path}: not an eval result (expected the JSON of `compass eval "
                                   "--json`, with tasks, macro and languages)")
        elif path.is_file() and path.suffix in RECIPE_SUFFIXES:
            art.recipes.append({"path": str(path), "text": path.read_text(encoding="utf-8", errors="replace")})
    return art


def loss_history(model: dict) -> list[dict]:
    """[{step, loss, masked_share?}] as the trainer logged them (models trained before compass recorded the
    history have none)."""
    fit = (model.get("train") or {}).get("fit") or {}
    return [h for h in fit.get("log_history") or [] if "loss" in h and "step" in h]


def _same_model(label: str | None, ref: str | None) -> bool:
    if not label or not ref:
        return False
    a, b = str(label).rstrip("/"), str(ref).rstrip("/")
    return a == b or Path(a).name == Path(b).name


def eval_models(art: Artefacts) -> list[dict]:
    """Every evaluated model with its role: trained (a model folder), base (the base a trained model started
    from), baseline (any other evaluated model). One entry per model: an eval JSON of a trained folder replaces the
    folder's own evaluation (it is what the user ran last)."""
    out: dict[str, dict] = {}
    bases = {str((m["train"].get("config") or {}).get("base") or "") for m in art.models}
    for m in art.models:
        ev = m["train"].get("evaluation")
        if is_eval_result(ev):
            out[m["path"]] = {"label": m["name"], "role": "trained", "result": ev, "source": m["path"]}
    for e in art.evals:
        label = str(e["result"].get("model") or e["name"])
        trained = next((m for m in art.models if _same_model(label, m["path"])), None)
        if trained is not None:
            out[trained["path"]] = {"label": trained["name"], "role": "trained", "result": e["result"],
                                    "source": e["path"]}
            continue
        role = "base" if any(_same_model(label, b) for b in bases) else "baseline"
        out[label] = {"label": Path(label).name or label, "role": role, "result": e["result"], "source": e["path"]}
    order = {"trained": 0, "base": 1, "baseline": 2}
    return sorted(out.values(), key=lambda m: (order[m["role"]], m["label"]))
