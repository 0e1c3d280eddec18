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

import compass
from compass.catalog.db import Catalog, init_catalog
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
    from compass.catalog.ingest import ingest_files

    base = tmp_path / "base.duckdb"
    init_catalog(base)
    with Catalog(base) as cat:
        ingest_files(cat, [(SAMPLES / "th.jsonl", "th", "TH"), (SAMPLES / "vi.jsonl", "vi", "VN")])
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
