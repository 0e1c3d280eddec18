"""Catalog -> training `datasets.Dataset`, and the batch sampler that mixes languages fairly.

The dataset has the columns CAMLoss and MultipleNegativesRankingLoss read, in order:
``anchor, positive, negative_1..negative_K, label`` where ``label`` is the CAM metadata of the row
(``encode_cam_label``: class, task, positive hash, negative classes, negative hashes). MultipleNegativesRankingLoss
takes ``labels`` in its forward and ignores them, so both losses train on the very same dataset and batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: `compass --help` must not load datasets, and a GPU machine that
    # only fits a prepared dataset (benchmarks/gpu_train.py) needs neither the catalog (duckdb) nor polars
    import datasets
    import polars as pl

    from compass.catalog.db import Catalog

import functools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

from compass.errors import CompassError

LABEL = "label"


@dataclass
class TrainingData:
    dataset: datasets.Dataset
    langs: list[str]  # language of each row, for the sampler
    task_ids: dict[str, int]
    negative_set: str | None
    num_negatives: int
    counts: dict = field(default_factory=dict)  # per language / task, and what was dropped
    groups: list[int] = field(default_factory=list)  # mined negatives of each row (batches never mix two values)


def resolve_negative_set(cat: Catalog, negatives: str) -> str | None:
    """'none' -> None; 'latest' -> the newest set with negatives (None: none has); else a set id that must exist."""
    if negatives == "none":
        return None
    if negatives == "latest":
        from compass.filters.mine_stats import latest_negative_set  # the one rule, shared with publish

        return latest_negative_set(cat)
    if cat.scalar("SELECT count(*) FROM negative_sets WHERE set_id = ?", [negatives]):
        return negatives
    known = [r["set_id"] for r in cat.query("SELECT set_id FROM negative_sets ORDER BY created_at DESC")]
    raise CompassError(f"--negatives {negatives!r}: no such negative set in the catalog (known: "
                       f"{', '.join(known) or 'none, run `compass mine` first'}); or pass latest / none")


def task_ids_for(tasks: list[str]) -> dict[str, int]:
    """The loss's canonical task ids, extended (sorted, after the last id) with tasks the catalog has beyond them."""
    from compass.train.cam_loss import DEFAULT_TASK_IDS

    ids = dict(DEFAULT_TASK_IDS)
    for t in sorted(set(tasks) - set(ids)):
        ids[t] = max(ids.values(), default=-1) + 1
    return ids


def load_frame(cat: Catalog, split: str = "train", langs: list[str] | None = None) -> pl.DataFrame:
    """Kept examples of one split (optionally some languages), in a stable order."""
    sql = ("SELECT k.id, k.lang, k.task, k.anchor, k.positive, k.class_id FROM kept_examples k "
           "JOIN splits s ON s.example_id = k.id WHERE s.split = ?")
    params: list = [split]
    if langs:
        sql += f" AND k.lang IN ({', '.join('?' for _ in langs)})"
        params += list(langs)
    return cat.frame(sql + " ORDER BY k.id", params)


def load_negatives(cat: Catalog, set_id: str, k: int) -> dict[str, list[tuple[str, str | None]]]:
    """example id -> its first k (text, class id) negatives of a set, best rank first.

    A negative that is itself a dev/test example is skipped: training on it would show the model held-out texts.
    """
    rows = cat.query("""
        SELECT n.example_id, n.negative_text, ne.class_id AS neg_class
        FROM negatives n
        LEFT JOIN examples ne ON ne.id = n.negative_example_id
        LEFT JOIN splits ns ON ns.example_id = n.negative_example_id
        WHERE n.set_id = ? AND (n.negative_example_id IS NULL OR coalesce(ns.split, 'train') = 'train')
        ORDER BY n.example_id, n.rank""", [set_id])
    out: dict[str, list[tuple[str, str | None]]] = {}
    for r in rows:
        lst = out.setdefault(r["example_id"], [])
        if len(lst) < k:
            lst.append((r["negative_text"], r["neg_class"]))
    return out


MISSING_NEGATIVES = ("pairs", "drop")


def build_training_data(cat: Catalog, langs: list[str] | None = None, negatives: str = "latest",
                        num_negatives: int = 1, split: str = "train", missing: str = "pairs") -> TrainingData:
    """Kept train-split examples (+ up to k mined negatives each when a set is chosen) as a datasets.Dataset.

    A row with fewer than k mined negatives (the miner found none that passed its guards) keeps the ones it has:
    ``missing="pairs"`` (default) trains it with its j < k negatives, so with none as an (anchor, positive) pair
    against in-batch negatives; its missing negative columns hold None, and the sampler puts it only in batches of
    rows with the same j (``groups``), because a batch's columns must be the same for every row. ``"drop"`` leaves
    such rows out (the behaviour before: 3,503 of 11,198 rows of a real catalog, every Indonesian title->category
    row, were lost that way).
    """
    from datasets import Dataset

    from compass.train.cam_loss import encode_cam_label

    if missing not in MISSING_NEGATIVES:
        raise CompassError(f"--missing-negatives {missing!r}: use {' or '.join(MISSING_NEGATIVES)}")
    frame = load_frame(cat, split, langs)
    if frame.is_empty():
        raise CompassError(f"no kept examples in the {split!r} split"
                           f"{' for ' + ','.join(langs) if langs else ''}: run `compass generate` and "
                           "`compass split` first (or widen --langs)")
    set_id = resolve_negative_set(cat, negatives)
    k = num_negatives if set_id else 0
    negs = load_negatives(cat, set_id, k) if set_id else {}
    task_ids = task_ids_for(frame["task"].unique().to_list())
    rows, dropped = [], Counter()
    for r in frame.iter_rows(named=True):
        ns = negs.get(r["id"], [])
        if len(ns) < k and missing == "drop":
            dropped[r["task"]] += 1
            continue
        rows.append((r, ns))
    if not rows:
        raise CompassError(f"negative set {set_id}: none of the {frame.height} train examples has {k} negatives: "
                           "pass --num-negatives lower, --missing-negatives pairs, or --negatives none")
    width = max(len(ns) for _, ns in rows)  # no column that no row fills
    cols: dict[str, list] = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(width)},
                             LABEL: []}
    row_langs, row_tasks, groups = [], [], []
    for r, ns in rows:
        cols["anchor"].append(r["anchor"])
        cols["positive"].append(r["positive"])
        for i in range(width):
            cols[f"negative_{i + 1}"].append(ns[i][0] if i < len(ns) else None)
        # (3 + 2j,) for j negatives: the collator stacks labels of one group only, so lengths never mix
        cols[LABEL].append(encode_cam_label(r["class_id"], r["task"], r["positive"], ns, task_ids))
        row_langs.append(r["lang"])
        row_tasks.append(r["task"])
        groups.append(len(ns))
    short = Counter(t for t, g in zip(row_tasks, groups) if g < k)
    counts = {
        "examples": len(row_langs),
        "dropped_missing_negatives": sum(dropped.values()),
        "dropped_per_task": dict(sorted(dropped.items())),
        "fewer_negatives": sum(short.values()),  # trained with fewer than k negatives (0 = as pairs)
        "fewer_negatives_per_task": dict(sorted(short.items())),
        "negatives_per_row": {str(j): n for j, n in sorted(Counter(groups).items())},
        "per_lang": dict(sorted(Counter(row_langs).items())),
        "per_task": dict(sorted(Counter(row_tasks).items())),
    }
    return TrainingData(Dataset.from_dict(cols), row_langs, task_ids, set_id, k, counts, groups)


def describe_negatives(data: TrainingData) -> list[str]:
    """Console lines saying which rows were dropped or trained with fewer negatives than asked, and why."""
    c, k = data.counts, data.num_negatives
    fmt = lambda d: ", ".join(f"{t} {n}" for t, n in d.items())  # noqa: E731
    lines = []
    if c.get("dropped_missing_negatives"):
        lines.append(f"dropped {c['dropped_missing_negatives']} of {c['examples'] + c['dropped_missing_negatives']}"
                     f" rows with fewer than {k} mined negatives (--missing-negatives drop): "
                     f"{fmt(c['dropped_per_task'])}")
    if c.get("fewer_negatives"):
        lines.append(f"{c['fewer_negatives']} of {c['examples']} rows have fewer than {k} mined negatives (the miner "
                     f"refused every candidate, e.g. by margin or class): they train with what they have, as pairs "
                     f"against in-batch negatives when none, in batches of their own: "
                     f"{fmt(c['fewer_negatives_per_task'])}")
    return lines


def language_weights(langs: list[str], temperature: float) -> dict[str, float]:
    """p_lang proportional to n_lang ** (1 / T): T=1 keeps the data's mix, large T tends to uniform."""
    if temperature <= 0:
        raise CompassError(f"--lang-temperature must be > 0, got {temperature}")
    n = Counter(langs)
    w = {lang: c ** (1.0 / temperature) for lang, c in sorted(n.items())}
    z = sum(w.values())
    return {lang: v / z for lang, v in w.items()}


BATCH_DEDUP_MODES = ("anchor", "text")


class LanguageBalancedBatchSampler(DefaultBatchSampler):
    """Batches that mix languages by temperature sampling, with no anchor (``dedup="text"``: no text) twice in a batch.

    sentence-transformers' NoDuplicatesBatchSampler gives the second property over a uniform shuffle, where a
    language with 50x the rows fills 50x the batches. Here an epoch (len(dataset) draws) takes round(N * p_lang)
    rows of each language, p_lang ~ n_lang^(1/T), cycling through reshuffles of a small language (up-sampling) and
    through part of a large one (down-sampling, a different part each epoch); the draws are shuffled together and
    packed into batches greedily, deferring a row whose dedup key is already in the batch. The order depends only
    on (seed, epoch), so every data-parallel rank computes the same batches and takes its shard.

    ``dedup`` picks the key:

    - ``"anchor"`` (default): the anchor text. No anchor, hence no identical (anchor, positive, negatives...) row,
      repeats in a batch, but positives may: two title -> category rows of one category, the query -> title and
      description -> title rows of one listing (same title), a translation's positive. These are exactly the
      in-batch false negatives CAM masks by class and text, so the batch keeps the task mix of the data instead of
      pushing rows that share a label to the end of the epoch. Under plain InfoNCE they are false negatives.
    - ``"text"``: every text of the row (anchor, positive, negatives) is unique in the batch, across columns; no
      false negative by identical text can occur (what InfoNCE wants), and CAM has nothing left to mask by text.
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0, *, langs: list[str], temperature: float = 3.0, dedup: str = "anchor",
                 groups: list[int] | None = None, block: int = 1) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        if len(langs) != len(dataset):
            raise CompassError(f"sampler: {len(langs)} languages for {len(dataset)} rows")
        if dedup not in BATCH_DEDUP_MODES:
            raise CompassError(f"--batch-dedup {dedup!r}: use {' or '.join(BATCH_DEDUP_MODES)}")
        self.dedup = dedup
        label_cols = set(valid_label_columns or []) | {LABEL}
        text_cols = [c for c in dataset.column_names if c not in label_cols]
        if dedup == "anchor":
            text_cols = text_cols[:1]  # the first column is the anchor (sentence-transformers' column order)
        # (N,) tuples of the row's dedup keys; a missing negative (None) is no text
        self.texts = [tuple(t for t in row if t is not None) for row in zip(*(dataset[c] for c in text_cols))]
        self.weights = language_weights(langs, temperature)
        arr = np.asarray(langs)
        self.pools = {lang: np.flatnonzero(arr == lang) for lang in self.weights}
        self.quotas = self._quotas(len(langs))
        # groups: number of negative columns a row fills. A batch holds one group only (its columns must be the
        # same for every row); with N data-parallel processes, `block` = N consecutive batches share a group,
        # since process r takes batches r, r+N, ... and the loss gathers the same columns from every process.
        self.groups = np.zeros(len(langs), dtype=int) if groups is None else np.asarray(groups, dtype=int)
        if len(self.groups) != len(langs):
            raise CompassError(f"sampler: {len(self.groups)} negative counts for {len(langs)} rows")
        self.block = max(1, int(block))
        self._len_cache: tuple[int, int] | None = None

    def _quotas(self, n: int) -> dict[str, int]:
        """Largest-remainder rounding of n * p_lang, so quotas sum to n exactly."""
        raw = {lang: n * p for lang, p in self.weights.items()}
        q = {lang: int(v) for lang, v in raw.items()}
        for lang in sorted(raw, key=lambda x: (q[x] - raw[x], x))[: n - sum(q.values())]:
            q[lang] += 1
        return q

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([int(self.seed or 0), int(self.epoch)])

    def _stream(self, rng: np.random.Generator) -> np.ndarray:
        parts = []
        for lang, pool in self.pools.items():
            need = self.quotas[lang]
            reps = -(-need // len(pool))  # ceil
            # A different window of the reshuffled cycle each epoch, so down-sampling does not drop the same rows.
            cycle = np.concatenate([rng.permutation(pool) for _ in range(reps + 1)])
            start = (int(self.epoch) * need) % len(pool)
            parts.append(cycle[start:start + need])
        return rng.permutation(np.concatenate(parts)) if parts else np.array([], dtype=int)

    def _pack(self, stream: list[int]) -> list[list[int]]:
        """Greedy batches in stream order, deferring a row whose dedup key is already in the batch."""
        out: list[list[int]] = []
        carry: list[int] = []
        pos = 0
        while pos < len(stream) or carry:
            batch, seen, deferred = [], set(), []
            for i in carry:
                if len(batch) < self.batch_size and seen.isdisjoint(self.texts[i]):
                    batch.append(i)
                    seen.update(self.texts[i])
                else:
                    deferred.append(i)
            while len(batch) < self.batch_size and pos < len(stream):
                i = stream[pos]
                pos += 1
                if seen.isdisjoint(self.texts[i]):
                    batch.append(i)
                    seen.update(self.texts[i])
                else:
                    deferred.append(i)
            if len(batch) < self.batch_size and (self.drop_last or not batch):
                break
            out.append(batch)
            carry = deferred
        return out

    def _batches(self) -> list[list[int]]:
        rng = self._rng()
        stream = self._stream(rng)
        blocks: list[list[list[int]]] = []
        present = np.unique(self.groups[stream]) if len(stream) else []
        for g in present:
            packed = self._pack(stream[self.groups[stream] == g].tolist())
            for i in range(0, len(packed), self.block):
                if len(packed[i:i + self.block]) == self.block or self.block == 1:
                    blocks.append(packed[i:i + self.block])  # an incomplete block would split processes' groups
        if len(present) > 1:  # groups take turns in proportion to their size, in a (seed, epoch)-fixed order
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        return [b for blk in blocks for b in blk]

    def __iter__(self):
        batches = self._batches()
        self._len_cache = (int(self.epoch), len(batches))
        yield from batches

    def __len__(self) -> int:
        # Exact, by packing this epoch's batches: the trainer sizes its schedule from it, and deferral by dedup and
        # per-group packing make arithmetic on the row count only approximate.
        if self._len_cache is None or self._len_cache[0] != int(self.epoch):
            self._len_cache = (int(self.epoch), len(self._batches()))
        return self._len_cache[1]


def batch_sampler_factory(langs: list[str], temperature: float, dedup: str = "anchor",
                          groups: list[int] | None = None, block: int = 1):
    """What SentenceTransformerTrainingArguments(batch_sampler=...) takes; a partial so checkpoints can pickle it."""
    return functools.partial(LanguageBalancedBatchSampler, langs=list(langs), temperature=temperature, dedup=dedup,
                             groups=None if groups is None else list(groups), block=block)


class NegativeGroupCollator(SentenceTransformerDataCollator):
    """The library's collator, after dropping the negative columns that a batch's rows leave empty (None).

    Rows with j < k mined negatives hold None in negative_{j+1}..k; the sampler batches rows of one j together, so
    a column is empty for all rows of a batch or for none. The label (3 + 2j ints) then matches the columns left.
    """

    def __call__(self, features: list[dict]) -> dict:
        empty = [c for c in features[0] if c.startswith("negative_") and features[0][c] is None]
        if empty:
            mixed = [c for c in empty if any(f[c] is not None for f in features)]
            if mixed:
                raise CompassError(f"batch mixes rows with and without {mixed[0]}: use compass's "
                                   "LanguageBalancedBatchSampler with groups= (it never mixes them)")
            features = [{c: v for c, v in f.items() if c not in empty} for f in features]
        return super().__call__(features)
