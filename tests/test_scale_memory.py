"""Memory bounds of the global dedup stage and of mining (issue 15): one language's state at a time, the same
results as with everything in memory, and the runner's DuckDB cap applied while it streams, then restored."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest

import compass
from compass.catalog.db import Catalog
from compass.filters.dedup import Dedup
from compass.filters.dedup_signatures import DedupSignatures
from compass.ids import content_id
from compass.stage import Stage, insert_frame

T0 = dt.datetime(2100, 1, 1)
WORDS = {"vi": "giày thể thao nam nike air max đen trắng chính hãng mới áo thun cotton".split(),
         "id": "sepatu lari pria nike air zoom pegasus hitam putih original murah tas kulit".split(),
         "th": list("รองเท้าผ้าใบผู้ชายสีดำของแท้")}


def rows(n: int = 240, seed: int = 0) -> list[dict]:
    """Examples in three languages and two tasks, created in interleaved order, with exact and near copies."""
    rng = random.Random(seed)
    out, texts = [], {lang: [] for lang in WORDS}
    for i in range(n):
        lang = rng.choice(sorted(WORDS))
        sep = "" if lang == "th" else " "
        if texts[lang] and rng.random() < 0.35:
            base = rng.choice(texts[lang])
            anchor = base if rng.random() < 0.5 else base + sep + rng.choice(WORDS[lang])   # exact / near copy
        else:
            anchor = sep.join(rng.choices(WORDS[lang], k=9))
            texts[lang].append(anchor)
        positive = sep.join(anchor.split(sep)[:4]) if sep else anchor[:8]
        task = rng.choice(["query2title", "desc2title"])
        out.append({"id": content_id("example", "grounded", lang, task, anchor, positive, i), "route": "grounded",
                    "lang": lang, "task": task, "anchor": anchor, "positive": positive, "class_id": f"c{i}",
                    "created_at": T0 + dt.timedelta(seconds=i)})
    return out


def catalog(path, recs: list[dict]) -> Catalog:
    cat = Catalog(path, create=True)
    with cat.transaction() as con:
        insert_frame(con, "examples", pl.DataFrame(recs), ["id"])
    return cat


def outputs(cat: Catalog) -> tuple:
    return (cat.query("SELECT example_id, keep, reason, score FROM decisions ORDER BY example_id"),
            cat.query("SELECT example_id, field, scope, text_hash, seq, cluster_id, dup_of, exact FROM dedup_members "
                      "ORDER BY ALL"))


def test_dedup_keeps_one_language_in_memory_and_gives_the_same_result(tmp_path):
    recs = rows()
    whole = catalog(tmp_path / "whole.duckdb", recs)
    big = Dedup()
    big.batch_size = 10_000                      # one batch: every language's scopes in memory at once
    s = compass.run(whole, big, progress=False)
    assert s.read == len(recs) and s.info["rejected"] > 20
    expect = outputs(whole)
    whole.close()

    small = catalog(tmp_path / "small.duckdb", recs)
    compass.run(small, DedupSignatures, progress=False)   # here the stage reads stored signatures, per language
    st = Dedup()
    st.batch_size = 7                           # batches cut inside languages, a few holding two of them
    seen: list[set[str]] = []
    process = st.process

    def spy(batch):
        out = process(batch)
        seen.append({k[1].split("/")[0] for k in st.indexes})
        assert seen[-1] <= set(batch["lang"]), "indexes of a language not in the batch stayed in memory"
        return out

    st.process = spy
    s = compass.run(small, st, progress=False)
    assert "minhash_signatures" not in s.written           # every signature came from the stores
    assert outputs(small) == expect
    assert len(seen) > 30 and max(len(x) for x in seen) <= 2
    assert st.indexes == {} and st.state._tmp is None    # finish() removed the parked files
    small.close()


def test_dedup_fed_languages_out_of_order_reads_their_parked_indexes_back(tmp_path):
    """The runner feeds languages in order; any other feed parks and reloads, with the same result."""
    recs = rows(seed=1)
    cat = catalog(tmp_path / "c.duckdb", recs)
    compass.run(cat, Dedup, progress=False)
    expect = outputs(cat)[1]
    cat.close()
    frame = pl.DataFrame(recs).sort("created_at")
    st = Dedup()
    st.setup()
    parts = [st.process(frame.slice(i, 13)) for i in range(0, frame.height, 13)]   # languages interleaved
    st.finish()
    got = pl.concat([p["dedup_members"] for p in parts]).select(
        "example_id", "field", "scope", "text_hash", "seq", "cluster_id", "dup_of", "exact")
    assert len(parts) > 10 and sorted(map(str, got.rows(named=True))) == sorted(map(str, expect))


class _Probe(Stage):
    """Records DuckDB's memory_limit as the runner's transaction sees it."""

    name = "probe_memory"
    writes = {"decisions": ("example_id",)}
    duckdb_memory = "123MB"
    seen: list[str] = []

    def select(self, langs=None):
        # The count runs under the cap too (uncapped, it counts nothing, and the stage has nothing to do).
        return compass.stage.Selection("SELECT id FROM examples ORDER BY id", [],
                                       "SELECT count(*) FROM examples "
                                       "WHERE current_setting('memory_limit') = '117.3 MiB'")

    def process(self, batch):
        return {"decisions": batch}

    def write(self, con, outputs):
        type(self).seen.append(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
        return {}


def test_runner_caps_duckdb_while_it_streams_then_restores(tmp_path):
    cat = catalog(tmp_path / "c.duckdb", rows(20))
    before = cat.scalar("SELECT current_setting('memory_limit')")
    compass.run(cat, _Probe(), progress=False)
    assert _Probe.seen and set(_Probe.seen) == {"117.3 MiB"}           # 123 MB, as DuckDB prints it
    after = cat.scalar("SELECT current_setting('memory_limit')")
    assert abs(_bytes(after) / _bytes(before) - 1) < 0.01, (before, after)   # restored (as DuckDB rounds it)
    cat.close()


def _bytes(setting: str) -> float:
    num, unit = setting.split()
    return float(num) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


def test_mining_holds_the_pools_of_one_batch_and_mines_the_same(tmp_path, monkeypatch):
    """Pools are read once by prepare and parked; a batch holds only its own pools (the selection is ordered by
    pool) and carries no vectors; small batches mine what one batch over everything mines."""
    from compass.filters.mine import MineConfig, MineStage, mine
    from compass.train.static_base import build_static_model

    recs = [{**r, "market": "SG", "class_id": f"c{i % 40}", "translation_group": None,
             "positive": r["positive"] + f" {i % 40}"} for i, r in enumerate(rows(300, seed=2))]
    build_static_model([r["anchor"] for r in recs] + [r["positive"] for r in recs], embedding_dim=32,
                       vocab_size=300).save(str(tmp_path / "static"))
    process, held = MineStage.process, []

    def spy(self, b):
        out = process(self, b)
        assert "q_vec" not in b.columns and "p_vec" not in b.columns
        keys = {(k.lang, k.task) for k in self.pools}
        assert keys <= set(zip(b["_lang"], b["_task"])), "a pool of another batch stayed in memory"
        held.append(len(keys))
        return out

    monkeypatch.setattr(MineStage, "process", spy)
    got = []
    for batch in (10_000, 9):
        held.clear()
        cat = catalog(tmp_path / f"m{batch}.duckdb", recs)
        res = mine(cat, MineConfig(model=str(tmp_path / "static"), top_k=20, rank_window=(0, 20), margin=None,
                                   mine_batch=batch, progress=False))
        assert res["negatives"] > 100
        assert held == [6] if batch > 300 else (len(held) > 30 and max(held) <= 2)   # 3 languages x 2 tasks
        got.append(cat.query("SELECT example_id, rank, negative_text, score FROM negatives ORDER BY ALL"))
        cat.close()
    assert got[0] == got[1]


_CLOSE_CHILD = """
import os, resource, sys
import pyarrow as pa
from compass.catalog.db import Catalog
n = 400_000
raw = os.urandom(512 * n)   # signatures do not compress
t = pa.table({"text_hash": [f"h{i:09d}" for i in range(n)], "shingling": ["word2"] * n, "sig_params": ["p"] * n,
              "signature": [raw[512 * i:512 * (i + 1)] for i in range(n)]})
del raw
cat = Catalog(sys.argv[1], create=True)
for i in range(0, n, 20_000):   # 20 commits of 20,000 rows: about 240 MB of WAL, checkpointed on close
    part = t.slice(i, 20_000)
    with cat.transaction() as con:
        con.execute("INSERT INTO minhash_signatures (text_hash, shingling, sig_params, signature) SELECT * FROM part")
import compass.catalog.db as db
db.CLOSE_MEMORY = "64MB"   # a cap well below what the unbounded checkpoint takes (about +150 MB here)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cat.close()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow
def test_closing_a_written_catalog_checkpoints_under_a_memory_cap(tmp_path):
    """The checkpoint of a writer's close ran with DuckDB's default limit (80% of RAM): at 1M products the dedup
    stage's close grew its process by 1.5 GB after every batch had stayed under the stage's cap. Here: +150-165
    MB of peak RSS without the cap for this WAL; the child sets the cap to 64 MB."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CLOSE_CHILD, str(tmp_path / "c.duckdb")], capture_output=True,
                         text=True, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) < 80, out.stdout
    with Catalog(tmp_path / "c.duckdb", read_only=True) as cat:
        assert cat.scalar("SELECT count(*) FROM minhash_signatures") == 400_000
