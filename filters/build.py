"""Build and run the filter stages from one config, under one run record (what `compass filter` does).

    from compass.filters.build import run_filters
    results = run_filters("compass.duckdb", ["langid", "quality", "dedup"], against=["evals/"])

`build_filters` returns the stages in pipeline order (`dedup` is two stages: the shardable `dedup_signatures`
then the global clustering `dedup`); `run_filters` opens one `filter` run (lineage: every stage's parameters
and params hash) and calls `compass.runner.execute` for each stage, so each judges only what it has not judged
with these parameters and what the stages before it kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.filters.base import STAGE_ORDER, Filter, result
from compass.stage import Stage

SECTIONS = ("langid", "quality", "dedup", "leakage")


def check_config(config: dict, where: str = "--config") -> dict:
    """A config dict has sections named after filter stages only."""
    if not isinstance(config, dict):
        raise CompassError(f"{where}: expected an object with keys {', '.join(SECTIONS)}")
    bad = [k for k in config if k not in SECTIONS]
    if bad:
        raise CompassError(f"{where}: unknown section {bad[0]!r}: use {', '.join(SECTIONS)}")
    return config


def build_filters(stages: list[str], config: dict | None = None, against: str | Path | list | None = None,
                  lid_model: str | Path | None = None, threshold: float | None = None,
                  num_perm: int | None = None, label_only: bool = False) -> list[Stage]:
    """Stages for `stages` (names in STAGE_ORDER), in pipeline order, from a config dict (sections per stage)."""
    from compass.filters.dedup import Dedup, DedupConfig
    from compass.filters.dedup_signatures import DedupSignatures
    from compass.filters.langid import LangId, LangIdConfig
    from compass.filters.leakage import Leakage, LeakageConfig
    from compass.filters.quality import Quality, QualityConfig

    config = check_config(dict(config or {}))
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown:
        raise CompassError(f"--stages {unknown[0]!r}: unknown stage: use any of {', '.join(STAGE_ORDER)}")
    if isinstance(against, (str, os.PathLike)):
        against = [against]
    if "leakage" in stages and not against:
        raise CompassError("stage leakage needs --against DIR (a folder of eval JSONL files)")
    out: list[Stage] = []
    try:
        for s in STAGE_ORDER:
            if s not in stages:
                continue
            sec = dict(config.get(s, {}))
            if label_only:
                sec["label_only"] = True
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
                    cfg = DedupConfig(**sec)
                    out += [DedupSignatures(num_perm=cfg.num_perm, seed=cfg.seed), Dedup(cfg)]
                else:
                    out.append(Leakage(LeakageConfig(against=[str(a) for a in against], **sec)))
    except ValidationError as e:
        err = e.errors()[0]
        raise CompassError(f"filter config {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    return out


def run_config(filters: list[Stage], langs: list[str] | None, label_only: bool, extra: dict | None = None) -> dict:
    """The run record's config: each stage's parameters under its name, and every params hash."""
    return {"stages": [f.name for f in filters], "langs": langs, "label_only": label_only, **(extra or {}),
            **{f.name: f.params() for f in filters}, "params_hash": {f.name: f.params_hash for f in filters}}


def run_filters(catalog: Catalog | str | os.PathLike | None, stages: list[str], config: dict | None = None, *,
                against: str | Path | list | None = None, langs: list[str] | None = None,
                label_only: bool = False, lid_model: str | Path | None = None, threshold: float | None = None,
                num_perm: int | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the filter stages under one `filter` run record; returns {stage: {'judged', 'rejected', 'reasons'}}
    for every stage that writes decisions (and {'signed': n} for dedup_signatures)."""
    from compass.runner import execute

    filters = build_filters(stages, config, against, lid_model, threshold, num_perm, label_only)
    owned = not isinstance(catalog, Catalog)
    cat = Catalog(catalog) if owned else catalog
    results: dict[str, dict[str, Any]] = {}
    try:
        extra = {"config": config or {}, "against": [str(a) for a in (
            [against] if isinstance(against, (str, os.PathLike)) else against or [])]}
        with cat.run("filter", run_config(filters, langs, label_only, extra)) as rec:
            for f in filters:
                summary = execute(cat, f, rec, langs=langs, progress=progress)
                results[f.name] = (result(summary) if isinstance(f, Filter)
                                   else {"signed": summary.info.get("signed", 0)})
                rec.summary[f.name] = results[f.name]
    finally:
        if owned:
            cat.close()
    return results
