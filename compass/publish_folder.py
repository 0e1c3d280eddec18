"""Where `publish --to-dir` and `export --out` may write, and what they may remove.

compass writes only into a folder that is missing, empty, or that compass itself made. A folder it made holds a
marker, `.compass-manifest.json`, listing every file it wrote with its sha256. A rebuild removes only files listed
there (and only when they are still what compass wrote), so a user's file is never removed or overwritten:

- missing or empty folder: written;
- compass folder whose listed files are unchanged and that holds nothing else: rebuilt (stale shards removed);
- compass folder with an edited listed file or with files next to it that compass did not write: refused, unless
  `--overwrite`, which replaces the listed files and leaves every other file where it is;
- any other non-empty folder (no marker): refused, whatever the flags; choose a new or empty folder.

The marker is written before each file it lists, so a build killed half-way still leaves a folder compass
recognises as its own. It is never uploaded (publish_hub skips it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from compass.errors import CompassError

MARKER = ".compass-manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_marker(folder: Path) -> dict[str, str | None]:
    try:
        doc = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        files = doc["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) for k in files):
            raise ValueError("files is not an object of paths")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CompassError(f"{folder / MARKER} is damaged ({e}): compass cannot tell which files it wrote; "
                           "choose a new or empty folder") from None
    return files


def _safe_rel(folder: Path, rel: str) -> Path | None:
    """A listed path inside the folder, or None for one that escapes it (a tampered manifest)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        return None
    return folder / p


def _user_files(folder: Path, listed: set[str]) -> list[str]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel in (MARKER, MARKER + ".tmp") or rel in listed:
            continue
        if p.is_dir() and not p.is_symlink():
            continue  # a directory alone is no data; its files are checked one by one
        out.append(rel)
    return out


class Manifest:
    """Claims folder for a build, records each file before it is written, finalises with hashes."""

    def __init__(self, folder: str | Path, overwrite: bool = False):
        self.folder = Path(folder)
        self.files: dict[str, str | None] = {}
        self._prepare(overwrite)

    def _prepare(self, overwrite: bool) -> None:
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise CompassError(f"{folder} exists and is not a folder: choose another --to-dir / --out")
        if not folder.exists() or not any(folder.iterdir()):
            folder.mkdir(parents=True, exist_ok=True)
            self._save()
            return
        if not (folder / MARKER).is_file():
            names = sorted(p.name for p in folder.iterdir())
            raise CompassError(f"{folder} is not empty and compass did not make it (holds {', '.join(names[:3])}"
                               f"{', ...' if len(names) > 3 else ''}): choose a new or empty folder; compass "
                               "never removes files it did not write")
        old = _read_marker(folder)
        listed = {rel for rel in old if _safe_rel(folder, rel) is not None}
        edited = [rel for rel in sorted(listed) if old[rel] and (folder / rel).is_file()
                  and not (folder / rel).is_symlink() and _sha256(folder / rel) != old[rel]]
        foreign = _user_files(folder, listed)
        if (edited or foreign) and not overwrite:
            what = (f"{', '.join(foreign[:3])} {'were' if len(foreign) > 1 else 'was'} not written by compass"
                    if foreign else f"{', '.join(edited[:3])} changed since compass wrote "
                    f"{'them' if len(edited) > 1 else 'it'}")
            raise CompassError(f"{folder}: {what}: pass --overwrite to replace compass's files (others are kept), "
                               "or choose a new folder")
        for rel in sorted(listed):
            p = folder / rel
            if p.is_symlink() or p.is_file():
                p.unlink()  # a symlink is removed itself, never its target
                self._prune(p.parent)
        self.files = {}  # user files stay unlisted, so no later rebuild removes them either
        self._save()

    def _prune(self, d: Path) -> None:
        """Remove directories emptied by removing listed files, up to (not including) the folder."""
        while d != self.folder and self.folder in d.parents:
            try:
                d.rmdir()
            except OSError:
                return  # not empty: holds something that is not ours
            d = d.parent

    def _save(self) -> None:
        tmp = self.folder / (MARKER + ".tmp")
        doc = {"written_by": "compass", "files": dict(sorted(self.files.items()))}
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8", newline="\n")
        os.replace(tmp, self.folder / MARKER)

    def path(self, rel: str) -> Path:
        """Claim `rel` before writing it; a file compass did not write is never overwritten."""
        p = self.folder / rel
        if rel not in self.files:
            if p.exists() or p.is_symlink():
                raise CompassError(f"{p} exists and compass did not write it: move it away, or choose a new "
                                   "folder")
            self.files[rel] = None
            self._save()
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def finish(self) -> None:
        self.files = {rel: _sha256(self.folder / rel) for rel in self.files if (self.folder / rel).is_file()}
        self._save()
