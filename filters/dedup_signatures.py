"""Dedup, step 1 (shardable): each pending example's anchor and positive -> normalised hash + MinHash signature.

A signature depends on its text alone, so this step runs on any split of the examples (a distributed executor
can spread it); the clustering step (`compass.filters.dedup`, global, first-seen order) then reads the stored
signatures through a join in its selection instead of computing or querying them per batch.

Rows written: `minhash_signatures` once per (normalised text, shingling, signature parameters), and
`example_signatures` linking (example, field) to its text hash. Shingles are `compass.text.shingles`: word
bigrams for spaced scripts, character trigrams for th/lo/km/my; signatures equal datasketch's (see minhash.py).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from compass.filters.base import pending_where
from compass.filters.minhash import permutations, signatures
from compass.ids import params_hash
from compass.registry import stages
from compass.stage import Selection, Stage
from compass.text import CHAR_NGRAM, WORD_NGRAM, normalized_hash, shingles, uses_spaces

FIELDS = ("anchor", "positive")
SIG_KEY = ("text_hash", "shingling", "sig_params")
LINK_KEY = ("example_id", "field", "sig_params")
SIG_SCHEMA = {"text_hash": pl.Utf8, "shingling": pl.Utf8, "sig_params": pl.Utf8, "signature": pl.Binary,
              "run_id": pl.Utf8}
LINK_SCHEMA = {"example_id": pl.Utf8, "field": pl.Utf8, "sig_params": pl.Utf8, "text_hash": pl.Utf8,
               "shingling": pl.Utf8, "run_id": pl.Utf8}
_HEX = re.compile(r"[0-9a-f]{1,64}")


def sig_params(num_perm: int, seed: int) -> str:
    """Identity of a signature (stored with it): permutations, hashing scheme and shingle sizes."""
    return params_hash({"num_perm": num_perm, "seed": seed, "scheme": "affine32", "word_n": WORD_NGRAM,
                        "char_n": CHAR_NGRAM})


def shingling(lang: str) -> str:
    return f"word{WORD_NGRAM}" if uses_spaces(lang) else f"char{CHAR_NGRAM}"


def sql_hex(value: str) -> str:
    """A compass-computed hex hash, checked, for inlining in SQL (it is never user input)."""
    if not _HEX.fullmatch(value):
        raise ValueError(f"not a hex hash: {value!r}")
    return f"'{value}'"


def sign(texts: list[str], langs: list[str], num_perm: int, seed: int, perms: np.ndarray | None = None
         ) -> tuple[list[str], list[str], np.ndarray, dict[tuple[str, str], np.ndarray]]:
    """(hashes, shinglings, (n, num_perm) uint32 signatures, {(hash, shingling): signature} of each distinct
    text). A text that occurs twice is shingled and signed once."""
    hashes = [normalized_hash(t) for t in texts]
    kinds = [shingling(lang) for lang in langs]
    first: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(hashes, kinds)):
        first.setdefault(key, i)
    new = signatures([shingles(texts[i], langs[i]) for i in first.values()], num_perm, seed, perms)
    distinct = {key: new[j] for j, key in enumerate(first)}
    sigs = (np.stack([distinct[k] for k in zip(hashes, kinds)]) if texts
            else np.empty((0, num_perm), dtype=np.uint32))
    return hashes, kinds, sigs.astype(np.uint32), distinct


def signature_rows(distinct: dict[tuple[str, str], np.ndarray], sp: str, run_id: str | None) -> pl.DataFrame:
    keys = list(distinct)
    return pl.DataFrame({"text_hash": [k[0] for k in keys], "shingling": [k[1] for k in keys],
                         "sig_params": [sp] * len(keys),
                         "signature": [distinct[k].astype("<u4").tobytes() for k in keys],
                         "run_id": [run_id] * len(keys)}, schema=SIG_SCHEMA)


def link_rows(ids: list[str], field: str, hashes: list[str], kinds: list[str], sp: str,
              run_id: str | None) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame({"example_id": ids, "field": [field] * n, "sig_params": [sp] * n, "text_hash": hashes,
                         "shingling": kinds, "run_id": [run_id] * n}, schema=LINK_SCHEMA)


class SignatureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_perm: int = 128
    seed: int = 1

    def sig_params(self) -> str:
        return sig_params(self.num_perm, self.seed)


@stages.register
class DedupSignatures(Stage):
    """Signs the anchor and positive of every pending example (kept so far, not yet signed with these params)."""

    name: ClassVar[str] = "dedup_signatures"
    Config = SignatureConfig
    writes: ClassVar[dict[str, tuple[str, ...]]] = {"minhash_signatures": SIG_KEY, "example_signatures": LINK_KEY}
    shardable: ClassVar[bool] = True
    # Links are keyed by example (new ones only, see `select`); signatures by text, which examples share.
    appends: ClassVar[frozenset[str]] = frozenset({"example_signatures"})
    batch_size: ClassVar[int] = 20000
    unit: ClassVar[str] = "examples"
    duckdb_memory: ClassVar[str | None] = "512MB"   # its selection joins every link row: DuckDB spills past this

    def __init__(self, config: SignatureConfig | dict | None = None, **overrides: Any):
        super().__init__(config, **overrides)
        self._perms: np.ndarray | None = None

    def select(self, langs: list[str] | None = None) -> Selection:
        # Pending: kept so far (no enforced rejection) and without a link for these signature params. An example
        # with some links was signed by `dedup` itself (anchors only, without --cluster-positives), which signs
        # whatever it still lacks; so this stage writes every link of an example at once, each key new.
        where, params = pending_where(None, None, langs)
        where += (" AND NOT EXISTS (SELECT 1 FROM example_signatures s WHERE s.example_id = e.id "
                  f"AND s.sig_params = {sql_hex(self.config.sig_params())})")
        # No ORDER BY: a text's signature does not depend on which batch signs it (see pending_selection).
        return Selection(f"SELECT e.id, e.lang, e.anchor, e.positive FROM examples e {where}", params,
                         f"SELECT count(*) FROM examples e {where}")

    def setup(self) -> None:
        if self._perms is None:
            self._perms = permutations(self.config.num_perm, self.config.seed)

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        self.setup()
        c, sp = self.config, self.config.sig_params()
        ids, langs = batch["id"].to_list(), batch["lang"].to_list()
        sigs, links = {}, []
        for field in FIELDS:
            hashes, kinds, _, distinct = sign(batch[field].to_list(), langs, c.num_perm, c.seed, self._perms)
            sigs.update(distinct)
            links.append(link_rows(ids, field, hashes, kinds, sp, self.run_id))
        return {"minhash_signatures": signature_rows(sigs, sp, self.run_id),
                "example_signatures": pl.concat(links)}

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict[str, Any]:
        links = outputs.get("example_signatures")
        return {"signed": 0 if links is None else links.height}
