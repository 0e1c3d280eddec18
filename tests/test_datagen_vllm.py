"""Both LLM backends end to end against the real vLLM CPU engine, with a tiny random-weight model.

Needs the vLLM venv (`make vllm-env`, or `bash tests/support/setup_vllm.sh .venv-vllm`) named by
COMPASS_VLLM_VENV; skipped without it unless COMPASS_REQUIRE_VLLM=1. One model and one server per session.
The model's text is noise; structured output keeps it JSON, so the mechanics (requests, retries, accounting,
resume) are tested for real. Counts of valid answers vary with the noise; the invariants do not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest
from conftest import PRODUCTS_TH, run_cli, write_jsonl
from support.fault_proxy import FAULTS, FaultProxy, bucket, expected_outcome
from support.vllm_server import ENGINE_ARGS, ENV, HAVE_VLLM, VENV, vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VENV} (make vllm-env)")]

PRODUCTS_VI = [
    {"id": "vi-1", "title": "Nồi chiên không dầu Philips HD9252 4.1L", "category": "Điện gia dụng > Nồi chiên",
     "attributes": {"brand": "Philips", "model": "HD9252"}, "price": 1990000, "currency": "VND"},
    {"id": "vi-2", "title": "Áo thun nam cotton Uniqlo màu trắng size L", "category": "Thời trang nam > Áo thun",
     "attributes": {"brand": "Uniqlo", "size": "L"}, "price": 249000, "currency": "VND"},
]
GEN = ["--compact", "--max-tokens", "96", "--model"]



def make_catalog(tmp_path: Path) -> Path:
    cat = tmp_path / "c.duckdb"
    run_cli("init", catalog=cat)
    run_cli("ingest", str(write_jsonl(tmp_path / "th.jsonl", PRODUCTS_TH)), "--lang", "th", "--market", "TH",
            catalog=cat)
    run_cli("ingest", str(write_jsonl(tmp_path / "vi.jsonl", PRODUCTS_VI)), "--lang", "vi", "--market", "VN",
            catalog=cat)
    return cat


def rows(cat: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(cat), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stats(cat: Path) -> dict:
    return json.loads(run_cli("stats", "--json", catalog=cat).stdout)["generate"]


def check_accounting(cat: Path, requested: int) -> dict:
    acc = stats(cat)["generation"]
    assert acc["requested"] == requested
    assert acc["requested"] == acc["stored_valid"] + acc["stored_rejects"] + acc["failed_after_retries"]
    n_gen = rows(cat, "SELECT count(*), count(DISTINCT request_id) FROM generations")[0]
    assert n_gen[0] == n_gen[1] == requested
    return acc


def check_examples(cat: Path) -> None:
    """Every example of a valid answer has its lineage and a class id in the structured route's form."""
    ex = rows(cat, "SELECT e.task, e.class_id, e.product_id, e.template_id, e.request_id, g.status, p.attributes "
                   "FROM examples e JOIN generations g USING (request_id) JOIN products p ON p.id = e.product_id")
    assert ex, "no examples from valid answers"
    for task, cls, pid, tid, rid, status, attrs in ex:
        assert status == "ok" and tid and rid
        a = json.loads(attrs)
        assert cls.startswith("item:") if a.get("brand") and a.get("model") else cls == f"product:{pid}"
        assert task in {"query2title", "question2title", "review2title", "title2title", "attr_question2title"}


def test_openai_backend_end_to_end_and_resume(vllm_server, vllm_model, tmp_path):
    cat = make_catalog(tmp_path)
    args = ["generate", "--route", "grounded", "--n", "10", "--backend", "openai", "--base-url", vllm_server.url,
            "--concurrency", "4", *GEN, str(vllm_model)]
    dry = run_cli(*args, "--dry-run", catalog=cat)
    assert "10 requests" in dry.stdout and "nothing sent" in dry.stdout
    assert not rows(cat, "SELECT * FROM generations")
    out = run_cli(*args, catalog=cat, env={"OPENAI_API_KEY": "sk-test-secret-123"})
    assert "10 requested" in out.stderr
    acc = check_accounting(cat, 10)
    assert acc["failed_after_retries"] == 0 and acc["stored_valid"] > 0
    check_examples(cat)
    n_examples = rows(cat, "SELECT count(*) FROM examples")[0][0]
    # the key never reaches the catalog
    dump = json.dumps(rows(cat, "SELECT * FROM runs") + rows(cat, "SELECT messages, sampling FROM generations"),
                      default=str)
    assert "sk-test-secret" not in dump
    # rerun: nothing left to send, nothing added
    again = run_cli(*args, catalog=cat)
    assert "10 already answered, 0 sent" in again.stderr
    assert rows(cat, "SELECT count(*) FROM examples")[0][0] == n_examples
    # translate the valid Thai examples into Vietnamese: lineage and class id inherited
    run_cli("generate", "--route", "translate", "--source-langs", "th", "--langs", "vi", "--n", "4", "--backend",
            "openai", "--base-url", vllm_server.url, "--concurrency", "4", *GEN, str(vllm_model), catalog=cat)
    tr = rows(cat, "SELECT t.lang, t.class_id, s.class_id, t.translation_group, s.translation_group, t.task, s.task, "
                   "t.product_id, s.product_id FROM examples t JOIN examples s ON s.id = t.source_example_id "
                   "WHERE t.route = 'translate'")
    assert rows(cat, "SELECT count(*) FROM generations WHERE route = 'translate'")[0][0] == 4
    for lang, cls, src_cls, group, src_group, task, src_task, pid, src_pid in tr:
        assert lang == "vi" and cls == src_cls and group == src_group and task == src_task and pid == src_pid


def test_fault_proxy_accounting(vllm_server, vllm_model, tmp_path):
    cat = make_catalog(tmp_path)
    with FaultProxy(vllm_server.url.rsplit("/v1", 1)[0], hang_seconds=6.0) as proxy:
        run_cli("generate", "--route", "grounded", "--n", "24", "--backend", "openai", "--base-url",
                proxy.url + "/v1", "--concurrency", "6", "--timeout", "4", "--backoff", "0.05", "--max-retries", "2",
                *GEN, str(vllm_model), catalog=cat)
        log = list(proxy.log)
    acc = check_accounting(cat, 24)
    gens = rows(cat, "SELECT request_id, status, reject_reason, attempts FROM generations")
    seen = {bucket(r[0]) for r in gens}
    messages = dict(rows(cat, "SELECT request_id, error_message FROM generations"))
    assert {0, 1, 2, 3, 4, 5, 6} & seen, "the plan should meet several fault kinds"
    by_req = defaultdict(list)
    for entry in log:
        by_req[entry["request_id"]].append(entry)
    for rid, status, reason, attempts in gens:
        b, want = bucket(rid), expected_outcome(rid)
        if want == "failed":
            assert status == "failed"
            # 400 is never retried; 503 is retried max_retries times
            assert (reason, attempts) == (("http_400", 1) if FAULTS[b][0] == "400" else ("http_503", 3))
            assert messages[rid] == f"injected {FAULTS[b][0]}"  # the server's own words, not only the code
        elif want == "reject":
            assert status == "reject" and reason.startswith("parse:")
        else:
            assert status in ("ok", "reject"), (rid, FAULTS.get(b), status, reason)
            if b in FAULTS:  # a transient fault: retried exactly once more
                assert attempts == 2, (FAULTS[b], attempts)
        if b == 0 and len(by_req[rid]) > 1:  # Retry-After: 1 honoured
            assert by_req[rid][1]["t"] - by_req[rid][0]["t"] >= 0.95
    assert acc["failed_after_retries"] == sum(expected_outcome(r[0]) == "failed" for r in gens) > 0
    assert acc["stored_rejects"] >= sum(expected_outcome(r[0]) == "reject" for r in gens)
    human = run_cli("stats", catalog=cat).stdout
    assert "failed_after_retries" in human and "stored_rejects" in human


def test_vllm_offline_backend(vllm_model, tmp_path):
    """`generate --backend vllm` in the vLLM venv: the offline engine, per-request seeds, schema-valid JSON."""
    cat = make_catalog(tmp_path)
    cmd = [str(vllm_python(VENV)), "-m", "compass", "generate", "--route", "grounded", "--n", "8", "--backend",
           "vllm", "--engine-args", json.dumps(ENGINE_ARGS), "--batch-size", "4", *GEN, str(vllm_model),
           "--catalog", str(cat)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = check_accounting(cat, 8)
    assert acc["failed_after_retries"] == 0 and acc["stored_valid"] > 0
    assert rows(cat, "SELECT count(*) FROM generations WHERE backend = 'vllm' AND completion_tokens > 0 "
                     "AND prompt_tokens > 0")[0][0] == 8
    check_examples(cat)


def test_sigkill_mid_run_resumes_without_duplicates(vllm_server, vllm_model, tmp_path):
    # N well above what the tiny model answers before the poll below sees the first commits: at 30 a fast run
    # could finish before the kill landed.
    N = 120
    cat = make_catalog(tmp_path)
    args = [sys.executable, "-m", "compass", "generate", "--route", "grounded", "--n", str(N), "--backend", "openai",
            "--base-url", vllm_server.url, "--concurrency", "2", *GEN, str(vllm_model), "--catalog", str(cat)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until some chunks are committed (read while it writes: copy)
            time.sleep(1.0)
            snap = tmp_path / "snap.duckdb"
            try:
                import shutil

                shutil.copy(cat, snap)
                if Path(str(cat) + ".wal").exists():
                    shutil.copy(str(cat) + ".wal", str(snap) + ".wal")
                done = rows(snap, "SELECT count(*) FROM generations")[0][0]
            except duckdb.Error:
                continue
            if done >= 4:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = rows(cat, "SELECT count(*) FROM generations")[0][0]
    assert 0 < first < N, first
    out = run_cli(*args[3:-2], catalog=cat)
    assert f"{first} already answered, {N - first} sent" in out.stderr
    check_accounting(cat, N)
    assert rows(cat, "SELECT count(*) - count(DISTINCT id) FROM examples")[0][0] == 0


LONG_TH = {"id": "th-long", "title": "หม้อทอดไร้น้ำมัน Philips HD9252 4.1 ลิตร", "category": "เครื่องใช้ไฟฟ้า > หม้อทอด",
           "attributes": {"brand": "Philips", "model": "HD9252"}, "price": 1990, "currency": "THB",
           "description": " ".join(f"คุณสมบัติพิเศษข้อที่ {i} ทำความสะอาดง่าย ประหยัดไฟ รับประกันสองปี" for i in range(60))}


def test_context_overflow_is_named_then_skipped_as_too_long(vllm_server, vllm_model, tmp_path):
    """A prompt longer than the server's max_model_len (1024 tokens; this one is ~2000): the server's message is
    stored and shown, not just http_400; with the limit known (asked from /v1/models) the request is not sent
    but stored as reject too_long, and judged again on a rerun with another limit."""
    cat = tmp_path / "c.duckdb"
    run_cli("init", catalog=cat)
    run_cli("ingest", str(write_jsonl(tmp_path / "long.jsonl", [LONG_TH])), "--lang", "th", "--market", "TH",
            catalog=cat)
    args = ["generate", "--route", "grounded", "--backend", "openai", "--base-url", vllm_server.url,
            "--max-tokens", "96", "--model", str(vllm_model)]  # not --compact: the description goes in
    off = run_cli(*args, "--max-model-len", "0", catalog=cat, check=False)
    assert off.returncode == 1
    err = off.stderr.strip().splitlines()[-1]
    assert "the prompt exceeds the model's context" in err and "1024" in err, off.stderr
    assert "check that the server" not in err
    (status, reason, message), = rows(cat, "SELECT status, reject_reason, error_message FROM generations")
    assert status == "failed" and reason == "http_400" and "1024" in message
    skip = run_cli(*args, catalog=cat)  # max_model_len from the server's /v1/models
    assert "1 requests not sent" in skip.stderr and "max_model_len 1024" in skip.stderr, skip.stderr
    (status, reason, n, attempts), = rows(cat, "SELECT status, reject_reason, prompt_tokens, attempts "
                                                "FROM generations")
    assert (status, reason, attempts) == ("reject", "too_long", 0) and n > 1024
    check_accounting(cat, 1)
    again = run_cli(*args, "--max-model-len", "4096", catalog=cat, check=False)  # judged again, sent, refused
    assert again.returncode == 1 and "the prompt exceeds the model's context" in again.stderr
    assert rows(cat, "SELECT status FROM generations") == [("failed",)]


class SlowProxy(FaultProxy):
    """The fault proxy without faults, every answer held back: a generate that runs for a while."""

    def __init__(self, upstream: str, delay: float):
        super().__init__(upstream, faults=False)
        self.delay = delay

    def forward(self, h, body):
        if h.command == "POST":
            time.sleep(self.delay)
        super().forward(h, body)


def test_stats_works_during_a_running_generate(vllm_server, vllm_model, tmp_path):
    cat = make_catalog(tmp_path)
    with SlowProxy(vllm_server.url.rsplit("/v1", 1)[0], delay=1.0) as proxy:
        args = [sys.executable, "-m", "compass", "generate", "--route", "grounded", "--n", "12", "--backend",
                "openai", "--base-url", proxy.url + "/v1", "--concurrency", "1", *GEN, str(vllm_model),
                "--catalog", str(cat)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            seen = []
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and len(seen) < 3:
                out = run_cli("stats", "--json", catalog=cat)
                st = json.loads(out.stdout)
                running = {"command": "generate", "status": "running", "count": 1} in st["runs"]
                if running:
                    assert st["products"]["total"] == 5
                    assert "reading a copy of its last committed state" in out.stderr
                    seen.append(st.get("generate", {}).get("generation", {}).get("requested", 0))
                time.sleep(1.5)
            assert proc.wait(timeout=180) == 0, proc.stderr.read()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert len(seen) >= 2, seen
    assert seen == sorted(seen) and max(seen) < 12  # progress visible while it ran
    check_accounting(cat, 12)


def test_generate_from_python_records_lineage_and_resumes(vllm_server, vllm_model, tmp_path):
    """`compass.datagen.generate.generate`: the LLM route without the CLI, under a `generate` run record."""
    from compass.catalog.db import Catalog
    from compass.datagen.backends import Sampling
    from compass.datagen.generate import GenerateConfig, generate

    cat_path = make_catalog(tmp_path)
    cfg = GenerateConfig(route="grounded", model=str(vllm_model), n=6, compact=True, sampling=Sampling(max_tokens=96),
                         options={"base_url": vllm_server.url, "concurrency": 3}, write_every=2)
    with Catalog(cat_path) as cat:
        s = generate(cat, cfg, ["th"], progress=False)
        assert (s.info["requested"], s.info["sent"]) == (6, 6) and s.written["generations"] == 6
        assert s.info["ok"] + s.info["reject"] + s.info["failed"] == 6
        run = cat.query("SELECT command, status, config FROM runs WHERE id = ?", [s.run_id])[0]
        assert run["command"] == "generate" and run["status"] == "ok" and s.params_hash in run["config"]
        assert cat.scalar("SELECT count(*) FROM generations WHERE run_id = ? AND lang = 'th'", [s.run_id]) == 6
        assert cat.scalar("SELECT count(*) FROM examples WHERE run_id <> ?", [s.run_id]) == 0
        import compass  # the one runner dispatches a backend-fed stage to its executor

        again = compass.run(cat, "generate", cfg, langs=["th"], progress=False)
        assert again.nothing_to_do and again.info["already_answered"] == 6 and not again.written
    check_accounting(cat_path, 6)
