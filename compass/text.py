"""Text normalisation and shingling shared by dedup, leakage checks and mining guards.

Thai, Lao, Khmer and Burmese are written without spaces between words, so word n-grams would make a whole
phrase one token: those languages shingle on character n-grams (of the text with spaces removed); languages
written with spaces shingle on word n-grams. Normalisation is NFC + casefold + whitespace collapse, so two
strings differing only in case, spacing or Unicode composition count as exact duplicates, while a changed tone
mark (Vietnamese "mới" vs "mội") stays a different string that only near-dup detection can match.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

from compass.langs import LANGS

WORD_NGRAM = 2   # spaced scripts: word bigrams (+ unigrams for very short texts)
CHAR_NGRAM = 3   # unspaced scripts: character trigrams
_PUNCT = re.compile(r"[\s\u200b\u200c\u200d\ufeff]+")
# Punctuation and symbols become spaces. Not `[^\w\s]`: combining marks (Thai/Lao/Khmer/Burmese vowel signs
# and tone marks, category Mn/Mc) are not `\w`, and dropping them would merge different words.
@functools.lru_cache(maxsize=1)
def _strip_table() -> dict[int, str]:
    return {cp: " " for cp in range(0x30000) if unicodedata.category(chr(cp))[0] in "PS"}


def normalize(text: str) -> str:
    """NFC, casefold, zero-width characters removed, whitespace collapsed."""
    t = unicodedata.normalize("NFC", text or "").casefold()
    return _PUNCT.sub(" ", t).strip()


def normalized_hash(text: str) -> str:
    """Exact-duplicate key: the hash of the normalised text."""
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()[:20]


def uses_spaces(lang: str) -> bool:
    return LANGS.get(lang, {}).get("spaces", True)


def shingles(text: str, lang: str, word_n: int = WORD_NGRAM, char_n: int = CHAR_NGRAM) -> set[str]:
    """The shingle set of `text`: word n-grams for spaced scripts, character n-grams for th/lo/km/my."""
    t = normalize(text).translate(_strip_table())
    if uses_spaces(lang):
        words = t.split()
        if len(words) < word_n:
            return set(words)
        return {" ".join(words[i:i + word_n]) for i in range(len(words) - word_n + 1)}
    s = t.replace(" ", "")
    if len(s) < char_n:
        return {s} if s else set()
    return {s[i:i + char_n] for i in range(len(s) - char_n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def is_near_duplicate(a: str, b: str, lang: str, threshold: float = 0.8) -> bool:
    """Exact Jaccard on shingles (what MinHash estimates), for checking a few pairs without an index."""
    if normalize(a) == normalize(b):
        return True
    return jaccard(shingles(a, lang), shingles(b, lang)) >= threshold
