"""The bundled sample catalogs (package data), one file per language."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from compass.langs import LANGS


def sample_files() -> list[tuple[Path, str, str]]:
    """(path, lang, market) of every bundled sample catalog."""
    folder = resources.files("compass.catalog") / "samples"
    return [(Path(str(folder / f"{lang}.jsonl")), lang, meta["market"]) for lang, meta in LANGS.items()]
