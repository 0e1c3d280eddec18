"""Reading JSONL files of other people's making, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from compass.errors import CompassError


def iter_jsonl(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises a one-line CompassError."""
    try:
        fh = path.open("rb")
    except OSError as e:
        what = "is a directory: pass a .jsonl file" if path.is_dir() else f"cannot read ({e.strerror}): check the path"
        raise CompassError(f"{path}: {what}") from None
    with fh:
        for n, raw in enumerate(fh, 1):
            try:  # per line, so the message names the line (decoding the whole file would not)
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise CompassError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}): "
                                   "re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                msg = e.msg.removesuffix(" at")  # "Unterminated string starting at": never "at at column"
                raise CompassError(f"{path}:{n}: not JSON ({msg} at column {e.colno}): fix or remove the line") \
                    from None
            except RecursionError:
                raise CompassError(f"{path}:{n}: nested too deeply to read: flatten the line") from None
            if not isinstance(row, dict):
                raise CompassError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise CompassError(f"{path}:{n}: missing key {missing[0]!r} (each row needs {', '.join(required)})")
            yield n, row
