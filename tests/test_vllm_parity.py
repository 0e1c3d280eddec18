"""A trained transformer served by the real vLLM CPU engine embeds as sentence-transformers does.

Offline `LLM.embed` (through `compass export-fp8 --vllm-python`: the original model and its FP8 export) and the
OpenAI-compatible server (`/v1/embeddings` with the prompt prepended by the client, `/v2/embed` with `input_type`,
which prepends it itself), on the nine-language gate texts with the query and passage prompts and a text longer than
the model's token limit. Needs the vLLM venv (COMPASS_VLLM_VENV, else .venv-vllm); skipped without it unless
COMPASS_REQUIRE_VLLM=1. The folder checks without vLLM run everywhere.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
from support import tiny_encoder
from support.vllm_server import HAVE_VLLM, VENV, VLLMServer, vllm_python

from compass.errors import CompassError
from compass.train.fp8_export import export_fp8, load_gate_texts
from compass.train.vllm_serve import (
    PARITY_MEAN,
    PARITY_MIN,
    cosine_figures,
    prompted,
    st_embed,
    vllm_inputs,
    write_vllm_config,
)

pytestmark = pytest.mark.slow

TEXTS = [t for _, t in load_gate_texts()]
# past the 48-token limit: sentence-transformers truncates, so must the server
LONG = " ".join(TEXTS[i] for i in range(0, 90, 9))


def _trained(root: Path):
    rows = load_gate_texts()
    model = tiny_encoder.build(root / "base", TEXTS)
    anchors = [t for lang, t in rows if lang == "en"]
    positives = [t for lang, t in rows if lang == "id"]
    before = model[0].auto_model.encoder.layer[0].output.dense.weight.detach().clone()
    tiny_encoder.train_few_steps(model, anchors, positives)
    assert not torch.equal(model[0].auto_model.encoder.layer[0].output.dense.weight, before)
    model.save(str(root / "trained"))
    return root / "trained"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _trained(tmp_path_factory.mktemp("parity"))


def test_vllm_config_keeps_sentence_transformers_embeddings(trained, tmp_path):
    """What compass writes for vLLM (legacy Pooling/Normalize names and pooling key, the token limit) loads back in
    sentence-transformers without a warning and with the same embeddings; what vLLM cannot do is named."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "ready"
    shutil.copytree(trained, folder)
    model = SentenceTransformer(str(folder), device="cpu")
    before = model.encode(TEXTS[:20] + [LONG], prompt_name="query", convert_to_tensor=True)
    info = write_vllm_config(folder, model)
    assert info == {"pooling": "mean", "normalize": True, "max_seq_length": 48,
                    "prompts": tiny_encoder.PROMPTS, "problems": []}
    types = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
    assert types[1:] == ["sentence_transformers.models.Pooling", "sentence_transformers.models.Normalize"]
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert next(k for k, v in pooling.items() if v is True) == "pooling_mode_mean_tokens"  # older vLLM: first true
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        again = SentenceTransformer(str(folder), device="cpu")
    assert again.max_seq_length == 48 and again.prompts == tiny_encoder.PROMPTS
    torch.testing.assert_close(again.encode(TEXTS[:20] + [LONG], prompt_name="query", convert_to_tensor=True),
                               before)

    odd = tiny_encoder.build(tmp_path / "odd", TEXTS[:30], normalize=False, pooling="max", include_prompt=False)
    problems = write_vllm_config(tmp_path / "odd", odd)["problems"]
    assert len(problems) == 2 and "'max'" in problems[0] and "include_prompt" in problems[1]


def test_vllm_python_errors(trained, tmp_path):
    with pytest.raises(CompassError, match="--vllm-python .*no such Python"):
        export_fp8(trained, tmp_path / "out", vllm_python=tmp_path / "nopython")
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "trained-fp8"
    lines: list[str] = []
    return out, export_fp8(trained, out, vllm_python=vllm_python(VENV), echo=lines.append), lines


def _check(fig: dict, what: str) -> None:
    assert fig["mean_cos"] >= PARITY_MEAN and fig["min_cos"] >= PARITY_MIN, (what, fig)


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VENV} (make vllm-env)")
def test_llm_embed_parity_recorded_in_card(exported):
    out, info, lines = exported
    p = info["vllm_parity"]
    assert p["vllm"] and p["device"] == "cpu" and p["api"] == "LLM.embed" and p["max_model_len"] == 48
    assert p["prompts"] == ["document", "query"] and p["original_vs_st"]["n"] == 2 * len(TEXTS)
    _check(p["original_vs_st"], "original served by LLM.embed vs sentence-transformers")
    _check(p["fp8_vs_simulation"], "FP8 export served by LLM.embed vs compass's FP8 simulation")
    assert p["fp8_vs_original_st"]["mean_cos"] >= 0.995  # FP8 itself stays within the gate
    assert any("hidden size 128 < 768" in line for line in lines) and "0.38x" in info["speed_note"]
    card = (out / "README.md").read_text()
    assert f"vllm serve {out.resolve()} --runner pooling" in card
    assert f"mean cosine {p['original_vs_st']['mean_cos']:.5f}" in card and "`query`: `'query: '`" in card
    assert info["gate"]["passed"] and info["gate"]["size_ratio"] < 1.0 and info["dtype"] == "bfloat16"


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.vllm
@pytest.mark.skipif(not HAVE_VLLM, reason=f"no vLLM venv at {VENV} (make vllm-env)")
def test_server_embeddings_match_sentence_transformers(trained, tmp_path):
    """/v1/embeddings (client prepends the prompt) and /v2/embed (input_type: the server prepends it, read from
    config_sentence_transformers.json) on the vLLM-ready folder; a text over the limit is refused unless truncated,
    then truncated where sentence-transformers truncates."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "ready"
    shutil.copytree(trained, folder)
    model = SentenceTransformer(str(folder), device="cpu")
    write_vllm_config(folder, model)
    pairs = prompted(model, TEXTS + [LONG])
    ref = st_embed(model, pairs)
    srv = VLLMServer(VENV, folder, tmp_path / "vllm.log")
    srv.cmd = [str(vllm_python(VENV)), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--runner", "pooling", "--dtype", "float32", "--enforce-eager", "--host", "127.0.0.1",
               "--port", str(srv.port)]
    with srv:
        models = json.loads(urllib.request.urlopen(srv.url + "/models", timeout=10).read())["data"]
        assert models[0]["max_model_len"] == tiny_encoder.MAX_SEQ_LENGTH
        v1 = _post(srv.url + "/embeddings", {"model": str(folder), "input": vllm_inputs(model, pairs),
                                             "truncate_prompt_tokens": -1})
        e1 = torch.tensor([d["embedding"] for d in sorted(v1["data"], key=lambda d: d["index"])])
        root = srv.url.removesuffix("/v1")
        e2 = torch.cat([torch.tensor(_post(root + "/v2/embed", {
            "model": str(folder), "texts": [t for n, t in pairs if n == name], "input_type": name,
            "embedding_types": ["float"]})["embeddings"]["float"]) for name in ("document", "query")])
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(srv.url + "/embeddings", {"model": str(folder), "input": [LONG]})
    assert refused.value.code == 400
    _check(cosine_figures(e1, ref), "/v1/embeddings vs sentence-transformers")
    assert [n for n, _ in pairs] == ["document"] * len(TEXTS + [LONG]) + ["query"] * len(TEXTS + [LONG])
    _check(cosine_figures(e2, ref), "/v2/embed input_type vs sentence-transformers")
    assert torch.nn.functional.cosine_similarity(e1[-1:], ref[-1:]).item() > 0.9999  # the long query, truncated


def test_gpu_serve_benchmark_smoke_on_cpu():
    """benchmarks/gpu_serve.py end to end on a CPU (--smoke, vLLM off): a random model of the tiny shape, BF16
    sentence-transformers timed, the GPU-only engines skipped with their reason. It checks the script, not a GPU."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_serve.py"
    proc = subprocess.run([sys.executable, str(script), "run", "--smoke", "--device", "cpu", "--no-vllm",
                           "--sizes", "small"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["model"], r["engine"]) for r in rows] == [("e5-small (random)", "st-bf16")]
    assert rows[0]["emb_per_s"] > 0 and rows[0]["p50_ms"] > 0 and rows[0]["cos_mean"] == pytest.approx(1.0)
    assert "SKIPPED torchao-fp8" in proc.stdout and "| e5-small (random) | st-bf16 |" in proc.stdout
