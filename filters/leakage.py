"""Eval leakage: reject training examples whose anchor or positive (near-)duplicates a text of an eval set.

`--against DIR` reads every `*.jsonl` under DIR (recursively): BEIR `corpus.jsonl` (title, text) and
`queries.jsonl` (text), classification files, or any `{"text": ...}` lines. The eval task of a file is its
folder's path relative to DIR (the file's stem when it lies in DIR itself); it goes into the reason
(`leakage:eval_near_dup:<task>`). Near-duplicate = the same MinHash/Jaccard rule as dedup. An eval text has
no language tag, so both sides shingle by script here: character trigrams when Thai/Lao/Khmer/Myanmar letters
dominate, word bigrams otherwise (a Thai-example anchor that is all Latin, "Nike Air Max 90", must still match
the same eval query).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel

from compass.errors import CompassError
from compass.jsonl import iter_jsonl
from compass.filters.base import OK, Filter, Verdict
from compass.filters.dedup import NearDupIndex
from compass.filters.langid import LangId
from compass.filters.minhash import permutations, signatures
from compass.ids import params_hash
from compass.text import normalized_hash, shingles

TEXT_KEYS = ("title", "text", "query", "sentence", "question")


class LeakageConfig(BaseModel):
    against: str
    threshold: float = 0.8
    num_perm: int = 128
    seed: int = 1


def load_eval_texts(folder: str | Path) -> list[tuple[str, str]]:
    """(task, text) for every text field of every JSONL line under `folder`."""
    root = Path(folder)
    if not root.is_dir():
        raise CompassError(f"--against {root}: not a folder: pass a folder of eval JSONL files (BEIR or {{\"text\"}})")
    out: list[tuple[str, str]] = []
    for f in sorted(root.rglob("*.jsonl")):
        rel = f.parent.relative_to(root)
        task = str(rel) if str(rel) != "." else f.stem
        for _, rec in iter_jsonl(f):
            for k in TEXT_KEYS:
                v = rec.get(k)
                if isinstance(v, str) and v.strip():
                    out.append((task, v))
    if not out:
        raise CompassError(f"--against {root}: no texts found (no *.jsonl lines with a text/title/query field)")
    return out


def script_lang(texts: list[str]) -> list[str]:
    """'th' (stands for any unspaced script: character shingles) or 'en' (word shingles), per text."""
    c = LangId.script_counts(pl.Series(texts, dtype=pl.Utf8))
    unspaced = c["th"] + c["lo"] + c["km"] + c["my"]
    return ["th" if u * 2 > max(lt, 1) else "en" for u, lt in zip(unspaced.to_list(), c["letters"].to_list())]


class Leakage(Filter):
    """Rejects examples with a text that near-duplicates an eval text; reason names the eval task."""

    name: ClassVar[str] = "leakage"
    batch_size: ClassVar[int] = 20000

    def __init__(self, config: LeakageConfig):
        super().__init__()
        self.config = config
        self.eval = load_eval_texts(config.against)
        self._fingerprint = params_hash(sorted({normalized_hash(t) for _, t in self.eval}))
        self._index: tuple | None = None

    def params(self) -> dict:
        c = self.config.model_dump(exclude={"against"})
        return {**c, "eval_texts": self._fingerprint}

    def _sigs(self, texts: list[str]) -> np.ndarray:
        c = self.config
        langs = script_lang(texts)
        return signatures([shingles(t, l) for t, l in zip(texts, langs)], c.num_perm, c.seed, self._perms)

    def setup(self) -> None:
        if self._index is not None:
            return
        c = self.config
        self._perms = permutations(c.num_perm, c.seed)
        texts = [t for _, t in self.eval]
        self._index = NearDupIndex(c.threshold, c.num_perm)
        self._index.add(list(range(len(texts))), [normalized_hash(t) for t in texts], self._sigs(texts))

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        self.setup()
        n_eval = len(self.eval)
        verdicts: list[Verdict] = [OK] * batch.height
        for field in ("anchor", "positive"):
            texts = batch[field].to_list()
            # A fresh index per field and batch: eval texts first, so any match to an eval text is the
            # earliest one; matches among training texts (dedup's business) are ignored.
            idx = self._index.copy()
            res = idx.add(list(range(n_eval, n_eval + len(texts))), [normalized_hash(t) for t in texts],
                          self._sigs(texts))
            for i, (dup, exact, _, score) in enumerate(res):
                if dup is not None and dup < n_eval and verdicts[i][0]:
                    kind = "eval_exact" if exact else "eval_near_dup"
                    verdicts[i] = (False, f"leakage:{kind}:{self.eval[dup][0]}", score)
        return verdicts
