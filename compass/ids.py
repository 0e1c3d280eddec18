"""Content-hash ids: the same content always gets the same id, so re-inserting is a no-op."""

from __future__ import annotations

import hashlib
import json
from typing import Any

ID_HEX = 20  # 80 bits: collision odds stay negligible far past a billion rows


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the hashing form of any config or payload."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def content_id(kind: str, *parts: Any) -> str:
    """Stable id for `kind` (product, example, request...) from its identifying parts.

    The kind is part of the hash so a product and an example built from the same strings never collide.
    """
    # Parts are joined with the unit separator (not JSON) so SQL can compute the same id in bulk:
    # substr(sha256(concat_ws(chr(31), kind, part, ...)), 1, 20).
    key = "\x1f".join(p if isinstance(p, str) else canonical_json(p) for p in (kind, *parts))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:ID_HEX]


def params_hash(params: Any) -> str:
    """Short hash of a stage's parameters, stored on every decision / negative set."""
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()[:12]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_HEX]
