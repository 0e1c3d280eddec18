"""The Ray Data executor (compass.ray_executor) gives the catalog the local executor gives, table by table, on a
real local Ray cluster (2 CPUs, 127.0.0.1, started here); a worker killed mid-stage is retried by Ray."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import copy_catalog, two_language_catalog

import compass
from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.runner import RunSummary, build_stage, execute, run_config
from compass.stage import Stage

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "samples"
VOLATILE = {"run_id", "created_at", "started_at", "finished_at", "updated_at"}
# What each stage writes, compared table by table; the key orders the rows.
TABLES = {"examples": ["id"], "example_transforms": ["example_id"], "decisions": ["example_id", "stage", "params_hash"],
          "minhash_signatures": ["text_hash", "shingling"], "example_signatures": ["example_id", "field"],
          "dedup_members": None, "splits": ["example_id"], "split_policies": ["policy_hash"]}
CHAIN = [("structured", {"seed": 3}), ("langid", {}), ("quality", {}), ("dedup_signatures", {}), ("dedup", {}),
         ("split", {"test": 0.2, "dev": 0.1, "seed": 3})]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    # The test's own stage (below) is shipped by value: workers cannot import the tests folder.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """Two languages of the bundled samples (163 products each), ingested once, copied per test."""
    return two_language_catalog(tmp_path_factory.mktemp("base") / "c.duckdb")


def table(path: Path, name: str) -> pl.DataFrame:
    with Catalog(path, read_only=True) as cat:
        frame = cat.frame(f"SELECT * FROM {name}")
    frame = frame.drop([c for c in frame.columns if c in VOLATILE])
    return frame.sort(TABLES.get(name) or frame.columns)


def assert_same_catalogs(a: Path, b: Path) -> dict[str, int]:
    sizes = {}
    for name in TABLES:
        ta, tb = table(a, name), table(b, name)
        assert ta.columns == tb.columns, name
        assert ta.equals(tb), f"{name}: the ray executor's rows differ from the local executor's"
        sizes[name] = ta.height
    return sizes


def test_an_address_that_does_not_answer_fails_fast_naming_it(tmp_path):
    import socket
    import time

    from compass.ray_executor import connect

    if ray.is_initialized():
        pytest.skip("a Ray session is open in this process")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                       # a port nobody listens on
    t0 = time.monotonic()
    with pytest.raises(CompassError, match=f"Ray cluster at 127.0.0.1:{port} does not answer"):
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 10
    with pytest.raises(CompassError, match="expected HOST:PORT"):
        connect("nowhere")
    with pytest.raises(CompassError, match="Ray Client .ray://. is not supported"):
        connect(f"ray://127.0.0.1:{port}")


def test_without_an_address_a_dead_clusters_address_file_is_ignored(base, tmp_path):
    """`--executor ray` without --address starts a local cluster, even where Ray's address file names a cluster
    that died (ray.init would wait for it forever). In a child, with its own Ray temp folder."""
    import subprocess
    import tempfile

    path = copy_catalog(base, tmp_path)
    compass.run(path, "structured", {"seed": 3}, progress=False)
    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as ray_tmp:   # short: Ray's socket paths live there
        with socket.socket() as s:      # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        (Path(ray_tmp) / "ray").mkdir()
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(dead)   # where ray.init looks
        code = ("import sys, compass; s = compass.run(sys.argv[1], 'langid', executor='ray', progress=False); "
                "print(s.read, sum(s.written.values()))")
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    read, written = proc.stdout.split()[-2:]
    assert int(read) > 1000 and int(written) == int(read)


def test_ray_missing_names_the_extra(base, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)       # what `import ray` meets where Ray is not installed
    with pytest.raises(CompassError, match=r"pip install 'compass-embed\[ray\]'"):
        compass.run(copy_catalog(base, tmp_path), "quality", executor="ray", progress=False)


def own_loop(cat, stage, rec, langs=None, progress=True):
    """A stage's own executor (as LLM generation has): what it returns is the run's summary."""
    return RunSummary(rec.id, stage.name, stage.params_hash, read=7)


class OwnLoop(Stage):
    name = "toy_own_loop"
    executor = "test_ray_executor:own_loop"

    def process(self, batch):
        raise AssertionError("the runner's loop must not run a stage with its own executor")


def test_a_stage_with_its_own_executor_runs_on_the_driver_and_says_so(base, tmp_path, capsys):
    s = compass.run(copy_catalog(base, tmp_path), OwnLoop(), executor="ray", progress=False)
    assert s.read == 7
    assert ("stage toy_own_loop has its own executor (test_ray_executor:own_loop): running on the driver"
            in capsys.readouterr().err)


def test_unknown_executor_is_refused(base, tmp_path):
    with pytest.raises(CompassError, match="unknown executor 'spark': use one of local, ray"):
        compass.run(copy_catalog(base, tmp_path), "quality", executor="spark", progress=False)


def test_ray_executor_gives_the_local_catalog_table_by_table(cluster, base, tmp_path, capsys):
    local, remote = copy_catalog(base, tmp_path / "local"), copy_catalog(base, tmp_path / "ray")
    ev = tmp_path / "ev"                    # an eval set holding two sample titles: leakage rejects their pairs
    ev.mkdir()
    titles = [json.loads(line)["title"] for line in (SAMPLES / "vi.jsonl").read_text(encoding="utf-8").splitlines()[:2]]
    (ev / "vi_titles.jsonl").write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in titles),
                                        encoding="utf-8")
    chain = CHAIN[:3] + [("leakage", {"against": [str(ev)]})] + CHAIN[3:]
    for name, cfg in chain:
        ref, st = build_stage(name, cfg), build_stage(name, cfg)
        if name == "structured":
            # The same batches on both sides: an example's created_at is its batch's commit, and dedup keeps the
            # first seen in (created_at, id) order. Which batch a row lands in is otherwise free.
            ref.batch_size = st.batch_size = 100
        else:
            st.batch_size = 200    # several shards, cut elsewhere than the local executor's batches
        a = compass.run(local, ref, progress=False)
        b = compass.run(remote, st, executor="ray", progress=False)
        assert (b.read, b.written, b.info, b.params_hash) == (a.read, a.written, a.info, a.params_hash), name
        assert a.read > 0, name
    err = capsys.readouterr().err
    assert "stage dedup is global: running on the driver" in err and "cannot be shipped" not in err
    sizes = assert_same_catalogs(local, remote)
    assert sizes["examples"] > 1000 and sizes["decisions"] > 2 * sizes["examples"] and sizes["splits"] > 1000
    with Catalog(remote, read_only=True) as cat:   # each row carries the run record it was written under
        runs = cat.query("SELECT command, status, id FROM runs ORDER BY started_at")
        assert [r["command"] for r in runs] == [n for n, _ in chain] and {r["status"] for r in runs} == {"ok"}
        assert cat.scalar("SELECT count(*) FROM decisions WHERE reason LIKE 'leakage:%'") > 0
        langid_run = runs[1]["id"]
        assert cat.scalar("SELECT count(DISTINCT run_id) FROM decisions WHERE stage = 'langid'") == 1
        assert cat.scalar("SELECT any_value(run_id) FROM decisions WHERE stage = 'langid'") == langid_run
    again = compass.run(remote, "langid", executor="ray", progress=False)
    assert again.nothing_to_do


class DiesOnce:
    """Wraps a stage: the first `process` call on any worker kills that worker's process (os._exit, no cleanup),
    once per test (a marker file remembers it); Ray restarts the actor and redoes the shard."""

    def __init__(self, inner, marker: str):
        self.inner, self.marker = inner, marker

    def __getattr__(self, name):
        if name.startswith("__") or "inner" not in self.__dict__:   # pickling probes dunders on a bare object
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    def process(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.process(batch)


def test_a_killed_worker_is_retried_and_the_catalog_is_the_same(cluster, base, tmp_path):
    from compass.ray_executor import execute_ray


    local, remote = copy_catalog(base, tmp_path / "local"), copy_catalog(base, tmp_path / "ray")
    for path in (local, remote):
        compass.run(path, "structured", {"seed": 3}, executor="local", progress=False)
    a = compass.run(local, "quality", progress=False)
    marker = tmp_path / "died"
    st = build_stage("quality")
    st.batch_size = 150
    with Catalog(remote) as cat, cat.run(st.name, run_config(st)) as rec:
        st.run_id = rec.id
        sel = st.select(None)
        st.prepare(cat)
        summary = RunSummary(rec.id, st.name, st.params_hash)
        assert execute_ray(cat, DiesOnce(st, str(marker)), sel, summary, progress=False)
    assert marker.exists() and int(marker.read_text()) != os.getpid()   # a worker died, not this process
    assert (summary.read, summary.written, summary.info) == (a.read, a.written, a.info)
    assert_same_catalogs(local, remote)
    with Catalog(remote) as cat:
        assert execute(cat, st, None, executor="ray", progress=False).nothing_to_do


def test_a_recipe_on_ray_gives_the_local_catalog(cluster, base, tmp_path, capsys):
    """`compass run RECIPE --executor ray`, in process (the test's cluster): the commands a recipe calls reach
    the runner through their own code, and still run their shardable stages on Ray."""
    from compass.recipe import run

    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - generate: {route: structured}\n  - filter: {stages: [langid, quality, dedup]}\n"
                      "  - split: {test: 0.2, dev: 0.1}\nreport: false\n", encoding="utf-8")
    cats = {}
    for ex in ("local", "ray"):
        cats[ex] = copy_catalog(base, tmp_path / ex)
        run(recipe, out=tmp_path / ex, catalog=cats[ex], executor=ex, echo=lambda line: None)
    err = capsys.readouterr().err
    assert "stage dedup is global: running on the driver" in err and "cannot be shipped" not in err
    sizes = assert_same_catalogs(cats["local"], cats["ray"])
    assert sizes["splits"] == sizes["examples"] > 1000


# A second driver process on the test's cluster that SIGKILLs itself right after its first shard is committed:
# other shards are then in flight or done on the actors, none of them committed.
DRIVER = """import os, signal, sys
import compass
import compass.ray_executor as rx
from compass.runner import build_stage

commit = rx._commit_shard

def once(*args):
    commit(*args)
    os.kill(os.getpid(), signal.SIGKILL)

rx._commit_shard = once
st = build_stage("quality")
st.batch_size = 150
compass.run(sys.argv[1], st, executor="ray", address=sys.argv[2], progress=False)
"""


def test_a_killed_driver_resumes_from_the_catalog(cluster, base, tmp_path):
    import signal
    import subprocess

    local, remote = copy_catalog(base, tmp_path / "local"), copy_catalog(base, tmp_path / "ray")
    for path in (local, remote):
        compass.run(path, "structured", {"seed": 3}, progress=False)
    a = compass.run(local, "quality", progress=False)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), str(remote), ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with Catalog(remote) as cat:        # opening marks the killed run interrupted
        assert cat.scalar("SELECT count(DISTINCT example_id) FROM decisions WHERE stage = 'quality'") == 150
        assert cat.query("SELECT command, status FROM runs WHERE command = 'quality'") == [
            {"command": "quality", "status": "interrupted"}]
    st = build_stage("quality")
    st.batch_size = 150
    b = compass.run(remote, st, executor="ray", progress=False)
    assert b.read == a.read - 150 > 0      # only what the killed driver had not committed
    assert_same_catalogs(local, remote)


class Refuses(DiesOnce):
    def process(self, batch):
        raise CompassError(f"{self.marker}: bad rule file, line 3: fix it")


def test_a_stage_error_on_a_worker_reaches_the_driver_as_one_line(cluster, base, tmp_path):
    from compass.ray_executor import execute_ray

    path = copy_catalog(base, tmp_path)
    compass.run(path, "structured", {"seed": 3}, progress=False)
    st = build_stage("quality")
    with Catalog(path) as cat:
        sel = st.select(None)
        summary = RunSummary(None, st.name, st.params_hash)
        with pytest.raises(CompassError) as err:
            execute_ray(cat, Refuses(st, "rules.yaml"), sel, summary, progress=False)
        assert str(err.value) == "rules.yaml: bad rule file, line 3: fix it"
        assert cat.scalar("SELECT count(*) FROM decisions") == 0


def test_an_actor_keeps_the_last_units_it_fetched_and_fetches_others_again(cluster, tmp_path):
    """`FileCopies`: each unit copied from the object store into a folder of its own, the oldest removed past
    `keep`, a removed unit fetched again when asked; a unit never shipped is named."""
    from compass.errors import CompassError
    from compass.ray_executor import FileCopies

    refs = {f"u{i}": [(f"a{i}.bin", ray.put(bytes([i]) * 10)), ("b.npy", ray.put(b"b" * i))] for i in range(6)}
    copies = FileCopies(refs, keep=2)
    for i in [*range(6), 0, 5]:
        paths = copies.fetch(f"u{i}")
        assert Path(paths[f"a{i}.bin"]).read_bytes() == bytes([i]) * 10
        assert Path(paths["b.npy"]).read_bytes() == b"b" * i
        assert len(os.listdir(copies.folder)) <= 2
    assert list(copies.local) == ["u0", "u5"] and copies.fetched == 7    # u0 again, u5 still there
    with pytest.raises(CompassError, match="'u9' was not shipped"):
        copies.fetch("u9")
