"""Model card (README.md) and machine-readable record (compass_fp8.json) of an FP8 export."""

from __future__ import annotations

import json
from pathlib import Path

INFO_FILE = "compass_fp8.json"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _vllm_section(out: Path, info: dict) -> list[str]:
    serving = info.get("serving") or {}
    command = serving.get("command", f"vllm serve {out.resolve()} --runner pooling")
    prompts = serving.get("prompts") or {}
    lines = ["## Serving with vLLM", "", "```bash", f"{command}   # vLLM < 0.10: --task embed", "```", ""]
    parity = info.get("vllm_parity")
    if parity:
        from compass.train.vllm_serve import parity_line

        lines += [f"Parity measured by `compass export-fp8 --vllm-python` with vLLM {parity['vllm']} "
                  f"({parity['device']}, {parity['dtype']}, `{parity['api']}`, gate texts with each prompt):", "",
                  "| served by vLLM | compared with | figures |", "|---|---|---|",
                  f"| the original model | sentence-transformers | {parity_line(parity['original_vs_st'])} |",
                  f"| this FP8 export | compass's FP8 simulation (the gate) | "
                  f"{parity_line(parity['fp8_vs_simulation'])} |",
                  f"| this FP8 export | the original in sentence-transformers | "
                  f"mean {parity['fp8_vs_original_st']['mean_cos']:.5f}, min "
                  f"{parity['fp8_vs_original_st']['min_cos']:.5f} |", ""]
    else:
        lines += ["vLLM parity not measured here: `compass export-fp8 ... --vllm-python VENV/bin/python` serves the "
                  "export through vLLM's LLM.embed and records it.", ""]
    pooling = f"{serving.get('pooling')} pooling" + (", normalized" if serving.get("normalize") else "")
    lines += [f"vLLM reads {pooling} and the {serving.get('max_seq_length')}-token limit from this folder "
              "(modules.json, the pooling config, sentence_bert_config.json). Longer texts: pass "
              '`"truncate_prompt_tokens": -1` (truncate to the limit, as sentence-transformers does); vLLM refuses '
              "them otherwise."]
    if prompts:
        lines += ["", "Prompts (instructions) the model was trained and evaluated with: prepend them to the text "
                  "for `/v1/embeddings` and `LLM.embed`, or send `input_type` to `/v2/embed`, which prepends them:", ""]
        lines += [f"- `{name}`: `{prompt!r}`" for name, prompt in prompts.items()]
    if serving.get("problems"):
        lines += ["", "**vLLM cannot reproduce this model's embeddings:** " + "; ".join(serving["problems"]) + "."]
    return lines + [""]


def write_card(out: Path, info: dict) -> None:
    gate, sizes, th = info["gate"], info["sizes"], info["thresholds"]
    status = "PASSED" if gate["passed"] else "FAILED"
    ratio = sizes["fp8"] / max(sizes["bf16"], 1)
    lines = [f"# {out.name} (FP8)", "",
             f"**Fidelity gate: {status}**" + ("" if gate["passed"] else f" ({'; '.join(gate['failures'])}). "
                                                "Do not serve this export."), "",
             f"FP8 export of `{info['original']}` written by `compass export-fp8` (compass-embed) in the "
             "compressed-tensors format (llm-compressor's, loaded by vLLM): nn.Linear weights as float8_e4m3fn with "
             "one scale per output channel, activations quantised per token at run time "
             f"(preset `{info.get('preset', 'FP8_DYNAMIC')}`); embeddings, norms, biases and the pooler in "
             f"{info.get('dtype', 'their dtype')}.", ""]
    if info.get("speed_note"):
        lines += [f"Speed: {info['speed_note']}", ""]
    lines += [f"## Fidelity gate ({info.get('gate_device', 'cpu')}, {info.get('gate_precision', 'fp32')}; FP8 weights "
              "and activations simulated by compressed-tensors)", "",
              "| figure | value | gate |", "|---|---|---|",
              f"| mean cosine to the original ({gate['n_texts']} texts) | {gate['mean_cos']:.5f} | "
              f">= {th['mean_cos']} |",
              f"| min cosine | {gate['min_cos']:.5f} | >= {th['min_cos']} |",
              f"| size vs a BF16 copy | {ratio:.2f}x | < {th.get('max_size_ratio', 1.0):g} |"]
    for key, c in (gate.get("task_change") or {}).items():
        lines.append(f"| {key} on `{info['tasks']}` original -> FP8 | {c['original']:.2f} -> {c['fp8']:.2f} "
                     f"({c['change']:+.2f}) | >= -{th.get('max_points_lost', 1.0):g} points |")
    lines += ["", "Mean cosine per language: " + ", ".join(f"{k} {v:.4f}" for k, v in gate["per_lang"].items()),
              f"(texts: `{info['gate_texts']}`)", "",
              "## Size", "", "| checkpoint | weights on disk |", "|---|---|",
              f"| original | {_mb(sizes['original'])} |", f"| BF16 (computed) | {_mb(sizes['bf16'])} |",
              f"| this FP8 export | {_mb(sizes['fp8'])} ({ratio:.2f}x BF16) |", ""]
    lines += _vllm_section(out, info)
    lines += ["## sentence-transformers", "", "Any device; weights dequantised at load:", "", "```python",
              "from sentence_transformers import SentenceTransformer",
              "from transformers import CompressedTensorsConfig",
              f"model = SentenceTransformer({str(out)!r},",
              "    model_kwargs={'quantization_config': CompressedTensorsConfig(dequantize=True)})",
              "```", "",
              "or `compass.train.fp8_export.load_fp8(path)` for FP8 weights and activations simulated.", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
