"""Reading JSONL files of other people's making, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from compass.errors import CompassError


def iter_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises a one-line CompassError."""
    try:
        fh = path.open(encoding="utf-8")
    except OSError as e:
        raise CompassError(f"{path}: cannot read ({e.strerror}): check the path") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompassError(f"{path}:{n}: not JSON ({e.msg}): fix or remove the line") from None
            except UnicodeDecodeError:
                raise CompassError(f"{path}:{n}: not UTF-8: re-save the file as UTF-8") from None
            if not isinstance(row, dict):
                raise CompassError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise CompassError(f"{path}:{n}: missing key {missing[0]!r} (each row needs {', '.join(required)})")
            yield n, row
