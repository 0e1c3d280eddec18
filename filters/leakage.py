"""Eval leakage: reject training examples whose anchor or positive (near-)duplicates a text of an eval set.

`--against DIR` (repeatable) reads every `*.jsonl` under each DIR (recursively): BEIR `corpus.jsonl` (title,
text) and `queries.jsonl` (text), classification files, or any `{"text": ...}` lines. The eval task of a file
is its folder's path relative to DIR (the file's stem when it lies in DIR itself), prefixed by DIR's name when
several DIRs are given. The stage's parameters name every eval set (folder name, file count, a fingerprint of
its files' names and bytes), so checking against a new or changed set judges the kept examples again, and the
dataset card lists every set checked. The reason names every task the text matches, sorted and comma-separated
(`leakage:eval_near_dup:<task>[,<task>...]`), so per-task counts are right when eval sets share texts.
Near-duplicate = the same MinHash/Jaccard rule as dedup. An eval text has
no language tag, so both sides shingle by script here: character trigrams when Thai/Lao/Khmer/Myanmar letters
dominate, word bigrams otherwise (a Thai-example anchor that is all Latin, "Nike Air Max 90", must still match
the same eval query).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import field_validator

from compass.errors import CompassError
from compass.filters.base import OK, Filter, FilterConfig, Verdict
from compass.filters.dedup import NearDupIndex
from compass.filters.langid import LangId
from compass.filters.minhash import EMPTY, permutations, signatures
from compass.jsonl import iter_jsonl
from compass.registry import stages
from compass.text import normalized_hash, shingles

TEXT_KEYS = ("title", "text", "query", "sentence", "question")


class LeakageConfig(FilterConfig):
    against: list[str]
    threshold: float = 0.8
    num_perm: int = 128
    seed: int = 1

    @field_validator("against", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [str(v)] if isinstance(v, (str, Path)) else [str(x) for x in v]


def load_eval_folders(folders: list[str | Path]) -> list[tuple[str, str]]:
    """(task, text) of every folder; with several folders a task is prefixed by its folder's name."""
    if len(folders) == 1:
        return load_eval_texts(folders[0])
    names = [Path(f).resolve().name for f in folders]
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CompassError(f"--against: two folders are named {dup!r}: their tasks would share names; "
                           "give each eval folder a distinct name")
    return [(f"{name}/{task}", text) for f, name in zip(folders, names) for task, text in load_eval_texts(f)]


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


def eval_sets(folders: list[str | Path]) -> list[dict]:
    """Identity of each eval folder without parsing it: name, number of JSONL files, and a hash of their
    relative names and bytes (what decides the leakage verdicts and the task names in reasons)."""
    out = []
    for f in folders:
        root = Path(f)
        if not root.is_dir():
            raise CompassError(f"--against {root}: not a folder: pass a folder of eval JSONL files (BEIR or "
                               '{"text"})')
        files = sorted(root.rglob("*.jsonl"))
        h = hashlib.sha256()
        for p in files:
            with p.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").digest()
            h.update(p.relative_to(root).as_posix().encode("utf-8") + b"\0" + digest)
        out.append({"name": root.resolve().name, "files": len(files), "fingerprint": h.hexdigest()[:16]})
    names = [e["name"] for e in out]
    if len(out) > 1 and len(set(names)) < len(names):
        load_eval_folders(folders)  # raises the one-line error naming the shared folder name
    return sorted(out, key=lambda e: (e["name"], e["fingerprint"]))


@stages.register
class Leakage(Filter):
    """Rejects examples with a text that near-duplicates an eval text; reason names the eval task."""

    name: ClassVar[str] = "leakage"
    Config = LeakageConfig
    batch_size: ClassVar[int] = 20000

    def __init__(self, config: LeakageConfig | dict | None = None, **overrides):
        super().__init__(config, **overrides)
        self._sets: list[dict] | None = None
        self._index: tuple | None = None

    def params(self) -> dict:
        # Folder paths are left out (moving a folder changes nothing); what is in them is in `eval_sets`.
        c = super().params()
        c.pop("against", None)
        if self._sets is None:
            self._sets = eval_sets(self.config.against)
        return {**c, "eval_sets": self._sets}

    def _sigs(self, texts: list[str]) -> np.ndarray:
        c = self.config
        langs = script_lang(texts)
        return signatures([shingles(t, lang) for t, lang in zip(texts, langs)], c.num_perm, c.seed, self._perms)

    def setup(self) -> None:
        if self._index is not None:
            return
        c = self.config
        self.eval = load_eval_folders(c.against)
        self._perms = permutations(c.num_perm, c.seed)
        texts = [t for _, t in self.eval]
        hashes = [normalized_hash(t) for t in texts]
        self._eval_sigs = self._sigs(texts)                                  # (n_eval, num_perm) uint32
        self._has_shingles = ~(self._eval_sigs == EMPTY).all(axis=1)          # (n_eval,)
        self._tasks_by_hash: dict[str, set[str]] = {}
        for (task, _), h in zip(self.eval, hashes):
            self._tasks_by_hash.setdefault(h, set()).add(task)
        self._index = NearDupIndex(c.threshold, c.num_perm)
        self._index.add(list(range(len(texts))), hashes, self._eval_sigs)

    def _matches(self, h: str, sig: np.ndarray, root: int) -> tuple[bool, list[str], float]:
        """(exact?, every eval task the text matches, best score) for a text whose cluster is eval text `root`.

        The index answers only "is this in an eval cluster"; which tasks it matches needs every eval text, so
        exact hashes come from a dict and near matches from one vectorised comparison with all signatures.
        """
        exact = self._tasks_by_hash.get(h, set())
        tasks, score = set(exact), 1.0 if exact else 0.0
        if not (sig == EMPTY).all():
            sim = (self._eval_sigs == sig).mean(axis=1)                      # (n_eval,) Jaccard estimates
            near = np.flatnonzero((sim >= self.config.threshold) & self._has_shingles)
            tasks |= {self.eval[j][0] for j in near}
            if len(near):
                score = max(score, float(sim[near].max()))
        if not tasks:  # a chain (eval ~ a ~ b): b is in the eval text's cluster without matching it directly
            tasks = {self.eval[root][0]}
            score = float((self._eval_sigs[root] == sig).mean())
        return bool(exact), sorted(tasks), score

    def judge_batch(self, batch: pl.DataFrame) -> list[Verdict]:
        self.setup()
        n_eval = len(self.eval)
        verdicts: list[Verdict] = [OK] * batch.height
        for field in ("anchor", "positive"):
            texts = batch[field].to_list()
            # A fresh index per field and batch: eval texts first, so any match to an eval text is the
            # earliest one; matches among training texts (dedup's business) are ignored.
            idx = self._index.copy()
            hashes, sigs = [normalized_hash(t) for t in texts], self._sigs(texts)
            res = idx.add(list(range(n_eval, n_eval + len(texts))), hashes, sigs)
            for i, (_, _, cluster, _) in enumerate(res):
                # The cluster, not the match: a text twice in one batch matches its own first copy (a training
                # text), yet it is in the eval text's cluster all the same.
                if cluster < n_eval and verdicts[i][0]:
                    exact, tasks, score = self._matches(hashes[i], sigs[i], cluster)
                    kind = "eval_exact" if exact else "eval_near_dup"
                    verdicts[i] = (False, f"leakage:{kind}:{','.join(tasks)}", score)
        return verdicts
