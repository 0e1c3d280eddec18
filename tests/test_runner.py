"""The runner (compass.runner): lineage, streaming batches, one transaction per batch, resume, nothing to do."""

from __future__ import annotations

from typing import ClassVar

import polars as pl
import pytest
from pydantic import BaseModel

import compass
from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.runner import finished_run, process_shards
from compass.stage import Selection, Stage


class LenConfig(BaseModel):
    max_chars: int = 40
    batch_rows: int = 0  # volatile: how fast, not what


class LongAnchors(Stage):
    """A toy filter: rejects anchors longer than max_chars (decisions keyed by its params hash)."""

    name: ClassVar[str] = "toy_len"
    Config = LenConfig
    writes = {"decisions": ("example_id", "stage", "params_hash")}
    batch_size: ClassVar[int] = 3
    volatile = frozenset({"batch_rows"})
    fail_after: int | None = None

    def select(self, langs=None) -> Selection:
        sql = ("FROM examples e WHERE NOT EXISTS (SELECT 1 FROM decisions d WHERE d.example_id = e.id "
               "AND d.stage = ? AND d.params_hash = ?)")
        p = [self.name, self.params_hash]
        return Selection(f"SELECT e.id, e.anchor {sql} ORDER BY e.created_at, e.id", p, f"SELECT count(*) {sql}")

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise KeyboardInterrupt
            self.fail_after -= 1
        keep = batch["anchor"].str.len_chars() <= self.config.max_chars
        return {"decisions": pl.DataFrame({
            "example_id": batch["id"], "stage": self.name, "keep": keep,
            "reason": ["ok" if k else "toy:long" for k in keep],
            "score": None, "params_hash": self.params_hash, "enforced": True, "run_id": self.run_id},
            schema_overrides={"score": pl.Float64})}

    def summarize(self, outputs):
        d = outputs["decisions"]
        return {"rejected": int((~d["keep"]).sum())}


@pytest.fixture
def cat_with_examples(tmp_path):
    from compass.catalog.db import init_catalog

    path = tmp_path / "c.duckdb"
    init_catalog(path)
    with Catalog(path) as cat, cat.transaction() as con:
        for i in range(10):
            con.execute("INSERT INTO examples (id, route, lang, market, task, anchor, positive, class_id) "
                        "VALUES (?, 'structured', 'en', 'US', 'query2title', ?, 'p', ?)",
                        [f"e{i}", "x" * (10 * i), f"c{i}"])
    return path


def test_run_streams_batches_records_lineage_and_resumes(cat_with_examples):
    path = cat_with_examples
    s = compass.run(path, LongAnchors, {"max_chars": 40}, progress=False)
    assert (s.read, s.written, s.info) == (10, {"decisions": 10}, {"rejected": 5})
    with Catalog(path) as cat:
        assert finished_run(cat, "toy_len", s.params_hash) == s.run_id
        row = cat.query("SELECT status, config FROM runs WHERE id = ?", [s.run_id])[0]
        assert row["status"] == "ok" and '"max_chars":40' in row["config"].replace(" ", "")
        assert cat.scalar("SELECT count(DISTINCT run_id) FROM decisions") == 1
    again = compass.run(path, LongAnchors, {"max_chars": 40, "batch_rows": 7}, progress=False)
    assert again.nothing_to_do and again.params_hash == s.params_hash and "nothing to do" in str(again)


def test_a_changed_parameter_is_processed_again(cat_with_examples):
    compass.run(cat_with_examples, LongAnchors, {"max_chars": 40}, progress=False)
    s = compass.run(cat_with_examples, LongAnchors, {"max_chars": 20}, progress=False)
    assert s.read == 10 and s.info == {"rejected": 7} and s.written == {"decisions": 10}


def test_a_killed_run_keeps_complete_batches_and_resumes(cat_with_examples):
    st = LongAnchors({"max_chars": 40})
    st.fail_after = 2  # two batches of 3 commit, the third is interrupted
    with pytest.raises(KeyboardInterrupt):
        compass.run(cat_with_examples, st, progress=False)
    with Catalog(cat_with_examples) as cat:
        assert cat.scalar("SELECT count(*) FROM decisions") == 6
        assert cat.scalar("SELECT status FROM runs") == "interrupted"
    s = compass.run(cat_with_examples, LongAnchors, {"max_chars": 40}, progress=False)
    assert s.read == 4


def test_shards_equal_the_whole(cat_with_examples):
    with Catalog(cat_with_examples) as cat:
        frame = cat.frame("SELECT id, anchor FROM examples ORDER BY id")
    whole = process_shards(LongAnchors(), frame, 1)["decisions"]
    for n in (2, 3, 7):
        assert process_shards(LongAnchors(), frame, n)["decisions"].equals(whole)


def test_unknown_stage_names_the_nearest():
    from compass.registry import Registry

    reg = Registry("stage")
    reg.register(LongAnchors)
    with pytest.raises(CompassError, match="unknown stage 'toy_lenn' .did you mean 'toy_len'"):
        reg.get("toy_lenn")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(type("Other", (), {"name": "toy_len"}))


def test_bad_config_is_refused_before_anything_runs(cat_with_examples):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        compass.run(cat_with_examples, LongAnchors, {"max_chars": "many"}, progress=False)
