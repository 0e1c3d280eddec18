"""The languages compass knows, their scripts and markets."""

from __future__ import annotations

from compass.errors import CompassError

# ISO 639-1 where it exists, 639-3 otherwise (fil). fastText lid.176 calls Filipino `tl`.
LANGS: dict[str, dict] = {
    "th": {"name": "Thai", "script": "thai", "spaces": False, "market": "TH", "fasttext": "th"},
    "vi": {"name": "Vietnamese", "script": "latin", "spaces": True, "market": "VN", "fasttext": "vi"},
    "id": {"name": "Indonesian", "script": "latin", "spaces": True, "market": "ID", "fasttext": "id"},
    "ms": {"name": "Malay", "script": "latin", "spaces": True, "market": "MY", "fasttext": "ms"},
    "fil": {"name": "Filipino", "script": "latin", "spaces": True, "market": "PH", "fasttext": "tl"},
    "my": {"name": "Burmese", "script": "myanmar", "spaces": False, "market": "MM", "fasttext": "my"},
    "km": {"name": "Khmer", "script": "khmer", "spaces": False, "market": "KH", "fasttext": "km"},
    "lo": {"name": "Lao", "script": "lao", "spaces": False, "market": "LA", "fasttext": "lo"},
    "en": {"name": "English", "script": "latin", "spaces": True, "market": "SG", "fasttext": "en"},
}
ALIASES = {"tl": "fil", "tha": "th", "vie": "vi", "ind": "id", "msa": "ms", "zsm": "ms", "mya": "my",
           "bur": "my", "khm": "km", "lao": "lo", "eng": "en", "tgl": "fil"}
# Unicode blocks of the scripts written without spaces between words.
SCRIPT_RANGES = {
    "thai": (0x0E00, 0x0E7F),
    "lao": (0x0E80, 0x0EFF),
    "myanmar": (0x1000, 0x109F),
    "khmer": (0x1780, 0x17FF),
}


def normalize_lang(code: str) -> str:
    """Map a user's language code to compass's code, or fail naming the known ones."""
    c = (code or "").strip().lower().replace("_", "-").split("-")[0]
    c = ALIASES.get(c, c)
    if c not in LANGS:
        raise CompassError(f"unknown language {code!r}: use one of {', '.join(LANGS)}")
    return c


def parse_langs(value: str | None) -> list[str] | None:
    """`th,vi` -> ['th', 'vi']; None or '' -> None (all languages)."""
    if not value:
        return None
    return [normalize_lang(x) for x in value.split(",") if x.strip()]
