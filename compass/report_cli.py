"""`compass report`: the run report as one self-contained HTML file (compass.report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.cli_common import CatalogOpt, console


def report(
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write [default: report.html beside the "
                                                     "catalog].")] = None,
    artefact: Annotated[Optional[list[Path]], typer.Option(
        "--artefact", help="A model folder, eval JSON (compass eval --json), dataset folder or recipe file to "
                           "include; repeatable. Train and publish runs' folders and eval JSONs beside the catalog "
                           "are found without it.")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Write the run report: funnel, reject reasons, generation, hard negatives, training, evaluation, lineage.
    Stages that did not run show as "not run"."""
    from compass.report import summary_lines, write_report

    path = write_report(catalog, out, artefact or [])
    for line in summary_lines(catalog, artefact or []):
        console.print(line, markup=False, highlight=False)
    console.print(f"report: {path}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(report)
