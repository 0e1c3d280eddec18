"""LLM generation on Ray (compass.datagen.llm_ray) writes the generations and examples the local executor writes.

End to end on a local Ray cluster (2 CPUs, 127.0.0.1, started here) against the real vLLM CPU server with the
tiny random-weight model (the vLLM venv, as tests/test_datagen_vllm.py): the same plan through both executors
gives the same tables, a rerun sends nothing (counted at a proxy in front of the server), an actor killed
mid-block still gives the same tables, and a driver killed mid-run (SIGKILL, a second driver process on the
test's cluster) resumes sending only what it had not committed. The ray.data.llm branch (vLLM engine replicas
on GPUs) cannot run here (no GPU, no Ray in the vLLM venv): its processor config and its row mapping are tested
without an engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from conftest import PRODUCTS_TH, write_jsonl
from support.fault_proxy import FaultProxy
from support.vllm_server import HAVE_VLLM, VENV

import compass
from compass.catalog.db import Catalog, init_catalog
from compass.datagen.backends import Sampling
from compass.datagen.generate import GenerateConfig
from compass.errors import CompassError

ray = pytest.importorskip("ray")



def needs_vllm(test):
    """The marks of tests/test_datagen_vllm.py: the real vLLM CPU server, skipped without its venv."""
    for mark in (pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(600),
                 pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VENV} (make vllm-env)")):
        test = mark(test)
    return test


SECRET = "sk-test-ray-secret-4242"
# Differ from run to run by nature, not by executor.
VOLATILE = {"run_id", "created_at", "latency_ms"}
TABLES = {"generations": "request_id", "examples": "id"}
PRODUCTS_VI = [
    {"id": "vi-1", "title": "Nồi chiên không dầu Philips HD9252 4.1L", "category": "Điện gia dụng > Nồi chiên",
     "attributes": {"brand": "Philips", "model": "HD9252"}, "price": 1990000, "currency": "VND"},
    {"id": "vi-2", "title": "Áo thun nam cotton Uniqlo màu trắng size L", "category": "Thời trang nam > Áo thun",
     "attributes": {"brand": "Uniqlo", "size": "L"}, "price": 249000, "currency": "VND"},
]


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The workers inherit the environment of the cluster started here: the key reaches them only that way.
    before = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = SECRET
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the test's own worker class
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = before



@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from compass.catalog.ingest import ingest_files

    d = tmp_path_factory.mktemp("base")
    path = d / "c.duckdb"
    init_catalog(path)
    with Catalog(path) as cat:
        ingest_files(cat, [(write_jsonl(d / "th.jsonl", PRODUCTS_TH), "th", "TH"),
                           (write_jsonl(d / "vi.jsonl", PRODUCTS_VI), "vi", "VN")])
    return path


def _copy(base: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, to / "c.duckdb")
    return to / "c.duckdb"


def configs(model: Path, url: str) -> list[tuple[GenerateConfig, list[str]]]:
    """A grounded plan (both languages), then the Thai answers translated into Vietnamese (links the sources
    into translation groups). write_every=2: several Ray blocks and several commits each."""
    common = dict(model=str(model), compact=True, write_every=2, options={"base_url": url, "concurrency": 2})
    return [(GenerateConfig(route="grounded", n=8, sampling=Sampling(max_tokens=64), **common), None),
            (GenerateConfig(route="translate", source_langs=["th"], n=4, sampling=Sampling(max_tokens=256), **common),
             ["vi"])]


def tables(path: Path) -> dict[str, pl.DataFrame]:
    with Catalog(path, read_only=True) as cat:
        out = {}
        for name, key in TABLES.items():
            frame = cat.frame(f"SELECT * FROM {name}")
            out[name] = frame.drop([c for c in frame.columns if c in VOLATILE]).sort(key)
    return out


def assert_same_tables(a: Path, b: Path) -> dict[str, pl.DataFrame]:
    ta, tb = tables(a), tables(b)
    for name in TABLES:
        assert ta[name].columns == tb[name].columns, name
        assert ta[name].equals(tb[name]), f"{name}: the ray executor's rows differ from the local executor's"
    return ta


@pytest.fixture(scope="module")
def reference(base, vllm_server, vllm_model, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The local executor's catalog for the plans, and its summaries."""
    path = _copy(base, tmp_path_factory.mktemp("local"))
    infos = [compass.run(path, "generate", cfg, langs=langs, progress=False).info
             for cfg, langs in configs(vllm_model, vllm_server.url)]
    t = tables(path)
    assert (t["generations"]["status"] == "ok").sum() > 0 and all(i["sent"] > 1 for i in infos)
    assert t["examples"].filter(pl.col("route") == "translate").height > 0, "no translation to link"
    return path, infos


def posts(proxy: FaultProxy) -> list[str]:
    return [e["request_id"] for e in proxy.log if e["request_id"]]


@needs_vllm
def test_generation_on_ray_gives_the_local_tables_and_a_rerun_sends_nothing(cluster, vllm_server, vllm_model, reference,
                                                                            base, tmp_path, monkeypatch):
    from compass.datagen import llm_ray
    from compass.datagen.generate import generate
    from compass.runner import use_executor

    local, local_infos = reference
    path = _copy(base, tmp_path)
    blocks = []
    real = llm_ray.actor_answers

    def spy(stage, requests, **kw):   # the real actor pool, its calls counted
        blocks.append(len(requests))
        yield from real(stage, requests, **kw)

    monkeypatch.setattr(llm_ray, "actor_answers", spy)
    with FaultProxy(vllm_server.url.rsplit("/v1", 1)[0], faults=False) as proxy:
        (grounded, _), (translate, langs) = configs(vllm_model, proxy.url + "/v1")
        a = compass.run(path, "generate", grounded, executor="ray", progress=False)
        # What `compass run RECIPE --executor ray` and `COMPASS_EXECUTOR=ray compass generate` reach.
        with use_executor("ray"), Catalog(path) as cat:
            b = generate(cat, translate, langs, progress=False)
        sent = posts(proxy)
        assert [a.info, b.info] == local_infos
        assert blocks == [i["sent"] for i in local_infos] and len(sent) == len(set(sent)) == sum(blocks)
        ref = assert_same_tables(local, path)
        again = [compass.run(path, "generate", cfg, langs=lg, executor="ray", progress=False)
                 for cfg, lg in ((grounded, None), (translate, langs))]
        assert posts(proxy) == sent, "a rerun sent requests again"
    assert all(s.nothing_to_do and s.info["sent"] == 0 for s in again)
    assert [s.info["already_answered"] for s in again] == [i["requested"] for i in local_infos]
    groups = ref["examples"].filter(pl.col("route") == "translate")["translation_group"]
    assert ref["examples"].filter(pl.col("id").is_in(groups.to_list()))["translation_group"].null_count() == 0
    # The key the workers used is in neither the catalog nor Ray's logs.
    with Catalog(path, read_only=True) as cat:
        dump = json.dumps([cat.query(f"SELECT * FROM {t}") for t in ("runs", "generations", "examples")],
                          default=str)
    assert SECRET not in dump
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


class DiesMidBlock:
    """Mixed into the answer worker: the first block any actor answers kills it after its first answer
    (os._exit, no cleanup), once per test (a marker file remembers); Ray restarts the actor and redoes it."""

    marker = ""

    def answer(self, requests):
        for i, res in enumerate(super().answer(requests)):
            if i == 1 and not os.path.exists(self.marker):
                Path(self.marker).write_text(str(os.getpid()))
                os._exit(1)
            yield res


@needs_vllm
def test_a_worker_killed_mid_block_still_gives_the_local_tables(cluster, vllm_server, vllm_model, reference, base,
                                                                tmp_path):
    from compass.datagen.llm_ray import AnswerWorker, execute_ray_stream
    from compass.datagen.llm_run import LLMGenerate
    from compass.runner import run_config

    worker = type("Dies", (DiesMidBlock, AnswerWorker), {"marker": str(tmp_path / "died")})
    path = _copy(base, tmp_path)
    with Catalog(path) as cat:
        for cfg, langs in configs(vllm_model, vllm_server.url):
            stage = LLMGenerate(cfg)
            with cat.run(stage.name, run_config(stage, langs)) as rec:
                execute_ray_stream(cat, stage, rec, langs=langs, progress=False, worker=worker)
    died = tmp_path / "died"
    assert died.exists() and int(died.read_text()) != os.getpid()   # an actor died, not this process
    assert_same_tables(reference[0], path)


# A second driver process on the test's cluster, SIGKILLed by itself right after its first chunk is committed
# (`summarize` runs after the commit): other blocks are then in flight on the actors, some answered, none committed.
DRIVER = """import os, signal, sys
import compass
from compass.datagen.generate import GenerateConfig
from compass.datagen.llm_run import LLMGenerate

def die(self, outputs):
    os.kill(os.getpid(), signal.SIGKILL)

LLMGenerate.summarize = die
cfg = GenerateConfig.model_validate_json(sys.argv[2])
compass.run(sys.argv[1], "generate", cfg, executor="ray", address=sys.argv[3], progress=False)
"""


@needs_vllm
def test_a_killed_driver_resumes_on_ray_and_sends_only_the_rest(cluster, vllm_server, vllm_model, reference, base,
                                                                 tmp_path):
    path = _copy(base, tmp_path)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    address = ray.get_runtime_context().gcs_address
    with FaultProxy(vllm_server.url.rsplit("/v1", 1)[0], faults=False) as proxy:
        grounded = configs(vllm_model, proxy.url + "/v1")[0][0]
        proc = subprocess.run([sys.executable, str(script), str(path), grounded.model_dump_json(), address],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        with Catalog(path) as cat:
            first = {r["request_id"] for r in cat.query("SELECT request_id FROM generations")}
            assert 0 < len(first) <= grounded.write_every < 8    # one chunk (by count or by write_seconds)
            assert cat.query("SELECT status FROM runs") == [{"status": "interrupted"}]   # as opening marks it
            before = len(posts(proxy))
            s = compass.run(cat, "generate", grounded, executor="ray", progress=False)
        resent = posts(proxy)[before:]
    assert s.info["already_answered"] == len(first) and s.info["sent"] == 8 - len(first)
    assert len(resent) == len(set(resent)) == 8 - len(first) and not set(resent) & first
    translate, langs = configs(vllm_model, vllm_server.url)[1]
    compass.run(path, "generate", translate, langs=langs, executor="ray", progress=False)
    assert_same_tables(reference[0], path)


@pytest.mark.slow
def test_backend_vllm_without_vllm_says_so_and_runs_on_the_driver(cluster, base, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: generation would go to ray.data.llm")
    cfg = GenerateConfig(route="grounded", model=str(tmp_path / "model"), backend="vllm", n=2)
    with pytest.raises(CompassError, match="--backend vllm needs the vllm package"):
        compass.run(_copy(base, tmp_path), "generate", cfg, executor="ray", progress=False)
    assert "--backend vllm on Ray needs vLLM in this environment" in capsys.readouterr().err


# --- ray.data.llm: what can be checked without a GPU and an engine -----------------------------------------

def test_vllm_processor_config_one_replica_per_gpu(tmp_path):
    pytest.importorskip("ray.data.llm", reason="ray.data.llm needs aiohttp (the test extra)")
    from ray.data.llm import vLLMEngineProcessorConfig

    from compass.datagen.llm_ray import processor_config
    from compass.datagen.llm_run import LLMGenerate

    stage = LLMGenerate(route="grounded", model="Qwen/Qwen3-8B", backend="vllm",
                        options={"batch_size": 64, "engine_args": {"max_model_len": 4096, "dtype": "bfloat16"}})
    cfg = processor_config(stage, gpus=4)
    assert isinstance(cfg, vLLMEngineProcessorConfig)
    assert (cfg.model_source, cfg.concurrency, cfg.batch_size) == ("Qwen/Qwen3-8B", (4, 4), 64)
    assert cfg.should_continue_on_error and cfg.task_type == "generate"
    assert {k: cfg.engine_kwargs[k] for k in ("seed", "max_model_len", "dtype")} == \
        {"seed": 0, "max_model_len": 4096, "dtype": "bfloat16"}


def test_vllm_rows_map_to_the_results_the_local_backend_gives():
    from compass.datagen.backends import LLMRequest
    from compass.datagen.llm_ray import (
        ID_COLUMN,
        REQUEST_COLUMNS,
        request_table,
        vllm_postprocess,
        vllm_preprocess,
        vllm_result,
    )
    from compass.datagen.llm_run import RESULT_SCHEMA, result_frame

    schema = {"type": "object", "properties": {"queries": {"type": "array", "items": {"type": "string"}}}}
    req = LLMRequest("r1", [{"role": "user", "content": "สวัสดี"}], schema, Sampling(0.7, 0.9, 32), 11)
    row = dict(zip(REQUEST_COLUMNS, (c[0] for c in request_table([req]).to_pydict().values())))
    pre = vllm_preprocess(row)
    assert pre["messages"] == req.messages and pre["max_tokens"] == 32
    sp = pre["sampling_params"]
    assert (sp["temperature"], sp["top_p"], sp["max_tokens"], sp["seed"]) == (0.7, 0.9, 32, 11)
    assert json.loads(sp["structured_outputs"]["json"]) == schema and sp["structured_outputs"]["disable_any_whitespace"]
    # What the processor's stages add to the row (vLLMOutputData fields, its own integer request_id).
    engine = {**row, **pre, ID_COLUMN: "r1", "request_id": 0, "generated_text": '{"queries":["a"]}',
              "num_input_tokens": 17, "num_generated_tokens": 6, "time_taken_llm": 0.25, "__inference_error__": ""}
    ok = vllm_result(vllm_postprocess(engine))
    assert (ok.request_id, ok.status, ok.text, ok.finish_reason, ok.prompt_tokens, ok.completion_tokens,
            ok.latency_ms) == ("r1", "ok", '{"queries":["a"]}', "stop", 17, 6, 250.0)
    cut = vllm_result(vllm_postprocess({**engine, "num_generated_tokens": 32}))
    assert cut.finish_reason == "length"             # all of max_tokens used: the parser calls it truncated
    # An error row bypasses postprocess and keeps the whole row, the error in __inference_error__.
    bad = vllm_result({**engine, "__inference_error__": "ValueError: prompt too long\n  at ...",
                       "generated_text": ""})
    assert (bad.status, bad.error) == ("failed", "engine:ValueError: prompt too long")
    frame = result_frame([ok, cut, bad])
    assert frame.schema == pl.Schema(RESULT_SCHEMA) and frame["request_id"].to_list() == ["r1"] * 3
