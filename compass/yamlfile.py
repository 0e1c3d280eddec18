"""One YAML reader for compass's data files (prompt templates, shopper rules): a mapping or a one-line error."""

from __future__ import annotations

from pathlib import Path

import yaml

from compass.errors import CompassError


def load_mapping(path: Path, expected: str = "a mapping of keys at the top level") -> dict:
    """The file's top-level mapping; CompassError naming the file and line on bad YAML or another shape."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise CompassError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)}): fix the syntax") from None
    if not isinstance(data, dict):
        raise CompassError(f"{path}: expected {expected}")
    return data
