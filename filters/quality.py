"""Quality rules: cheap checks that catch broken generations and unusable pairs, each its own reason code.

Checked on both texts of the pair, in this order (the first failing rule is the reason):
template leftovers, JSON debris, URLs, phone numbers (for the tasks that forbid them; default: all), length
bounds in characters per language (Thai/Lao/Khmer/Burmese pack a word into more code points than Latin, and
a Burmese syllable is several code points), anchor equal to positive (after normalisation), repeated n-grams
(share of duplicate n-gram occurrences: word bigrams for spaced scripts, character 4-grams for th/lo/km/my).

One length exception: a long *anchor* of a task whose anchors are free product text (`long_anchor_tasks`,
default desc2title) is kept with the reason code `quality:long_anchor` (score = its length) instead of rejected as
`quality:too_long`: training truncates it to the model's token limit (`compass train --max-seq-length`), and such
descriptions were a fifth of a real catalog's desc2title pairs. Above `long_anchor_max_chars` it is still rejected.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from compass.filters.base import OK, Filter, FilterConfig, Verdict
from compass.registry import stages
from compass.text import normalize, uses_spaces

TEMPLATE = re.compile(
    r"\{\{|\}\}|\{%|%\}|<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>|</?think>|"
    r"^\s*(system|user|assistant|human)\s*:|^\s*(query|anchor|positive|title|answer|output)\s*:|"
    r"\bas an ai\b|\bas a language model\b|\bi(?:'m| am) (?:an ai|sorry, but)\b|\bi cannot (?:help|assist)\b",
    re.IGNORECASE | re.MULTILINE)
JSON_DEBRIS = re.compile(r"^\s*\{|^\s*\[\s*[\"{]|\"\w+\"\s*:\s*[\"{\[\d]|\\[nt\"]|```")
URL = re.compile(r"https?://|\bwww\.|\b[\w-]+\.(?:com|net|org|io|shop|store|link|ly)(?:/|\b)", re.IGNORECASE)
# A phone number starts with a country code (+66) or a trunk 0 and has 9+ digits in groups: 081-234-5678,
# +84 912 345 678, (02) 1234 5678. Model numbers (A54, 144001, 57x30) have no leading 0/+ or too few digits.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?\(?\d{1,4}\)?|\(?0\d{1,3}\)?)(?:[\s.-]?\d{2,4}){2,3}(?!\w)")


def _digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


class QualityConfig(FilterConfig):
    """Per-language length bounds in characters (`*` is the default) and the rule switches."""

    min_chars: dict[str, int] = Field(default_factory=lambda: {"*": 2})
    max_chars: dict[str, int] = Field(default_factory=lambda: {"*": 2000, "my": 3000, "km": 3000, "lo": 2500})
    repeat_max: float = 0.5            # share of duplicate n-gram occurrences above which a text is rejected
    repeat_min_ngrams: int = 8         # texts with fewer n-grams are not judged for repetition
    url_tasks: list[str] = Field(default_factory=lambda: ["*"])    # tasks where URLs are rejected
    phone_tasks: list[str] = Field(default_factory=lambda: ["*"])  # tasks where phone numbers are rejected
    long_anchor_tasks: list[str] = Field(default_factory=lambda: ["desc2title"])  # long anchors kept (truncated)
    long_anchor_max_chars: int = 20000  # even there, longer than this is rejected as quality:too_long

    def bound(self, table: dict[str, int], lang: str) -> int:
        return table.get(lang, table["*"])


def repeated_share(text: str, lang: str) -> tuple[float, int]:
    """(share of n-gram occurrences that repeat an earlier one, number of n-grams)."""
    t = normalize(text)
    if uses_spaces(lang):
        toks = t.split()
        grams = [tuple(toks[i:i + 2]) for i in range(len(toks) - 1)]
    else:
        s = t.replace(" ", "")
        grams = [s[i:i + 4] for i in range(len(s) - 3)]
    if not grams:
        return 0.0, 0
    return 1 - len(set(grams)) / len(grams), len(grams)


@stages.register
class Quality(Filter):
    """Rule-based quality checks (see the module doc); one reason code per rule."""

    name: ClassVar[str] = "quality"
    Config = QualityConfig

    def judge(self, example: dict) -> Verdict:
        cfg = self.config
        lang, task = example["lang"], example["task"]
        texts = (example["anchor"] or "", example["positive"] or "")
        for t in texts:
            if TEMPLATE.search(t):
                return False, "quality:template_leftover", None
        for t in texts:
            if JSON_DEBRIS.search(t):
                return False, "quality:json_debris", None
        if "*" in cfg.url_tasks or task in cfg.url_tasks:
            if any(URL.search(t) for t in texts):
                return False, "quality:url", None
        if "*" in cfg.phone_tasks or task in cfg.phone_tasks:
            for t in texts:
                m = PHONE.search(t)
                if m and _digits(m.group()) >= 9:
                    return False, "quality:phone", None
        lo, hi = cfg.bound(cfg.min_chars, lang), cfg.bound(cfg.max_chars, lang)
        long_anchor = None
        for i, t in enumerate(texts):
            n = len(t.strip())
            if n < lo:
                return False, "quality:too_short", float(n)
            if n > hi:
                if i == 0 and task in cfg.long_anchor_tasks and n <= cfg.long_anchor_max_chars:
                    long_anchor = float(n)  # kept, if no later rule rejects it
                    continue
                return False, "quality:too_long", float(n)
        if normalize(texts[0]) == normalize(texts[1]):
            return False, "quality:anchor_equals_positive", None
        for t in texts:
            share, grams = repeated_share(t, lang)
            if grams >= cfg.repeat_min_ngrams and share > cfg.repeat_max:
                return False, "quality:repeated_ngrams", share
        if long_anchor is not None:
            return True, "quality:long_anchor", long_anchor
        return OK
