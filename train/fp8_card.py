"""Model card (README.md) and machine-readable record (compass_fp8.json) of an FP8 export."""

from __future__ import annotations

import json
from pathlib import Path

INFO_FILE = "compass_fp8.json"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def write_card(out: Path, info: dict) -> None:
    gate, sizes, th = info["gate"], info["sizes"], info["thresholds"]
    status = "PASSED" if gate["passed"] else "FAILED"
    lines = [f"# {out.name} (FP8)", "",
             f"**Fidelity gate: {status}**" + ("" if gate["passed"] else f" ({'; '.join(gate['failures'])}). "
                                                "Do not serve this export."), "",
             f"FP8 export of `{info['original']}` written by `compass export-fp8` (compass-embed) in the "
             "compressed-tensors format (llm-compressor's, loaded by vLLM): nn.Linear weights as float8_e4m3fn with "
             "one scale per output channel, activations quantised per token at run time "
             f"(preset `{info.get('preset', 'FP8_DYNAMIC')}`); embeddings, norms, biases and the pooler keep their "
             "dtype.", "",
             f"## Fidelity gate ({info.get('gate_device', 'cpu')}, {info.get('gate_precision', 'fp32')}; FP8 weights "
             "and activations simulated by compressed-tensors)", "",
             "| figure | value | gate |", "|---|---|---|",
             f"| mean cosine to the original ({gate['n_texts']} texts) | {gate['mean_cos']:.5f} | >= {th['mean_cos']} |",
             f"| min cosine | {gate['min_cos']:.5f} | >= {th['min_cos']} |"]
    if gate.get("rel_drop") is not None:
        lines.append(f"| macro on `{info['tasks']}` original -> FP8 | {gate['macro_original']:.4f} -> "
                     f"{gate['macro_fp8']:.4f} ({100 * gate['rel_drop']:+.2f}% drop) | <= {100 * th['max_rel_drop']:.0f}% |")
    lines += ["", "Mean cosine per language: " + ", ".join(f"{k} {v:.4f}" for k, v in gate["per_lang"].items()),
              f"(texts: `{info['gate_texts']}`)", "",
              "## Size", "", "| checkpoint | weights on disk |", "|---|---|",
              f"| original | {_mb(sizes['original'])} |", f"| BF16 (computed) | {_mb(sizes['bf16'])} |",
              f"| this FP8 export | {_mb(sizes['fp8'])} ({sizes['fp8'] / max(sizes['bf16'], 1):.2f}x BF16) |", "",
              "## Usage", "", "vLLM (GPU):", "", "```bash",
              f"vllm serve {out} --task embed   # newer vLLM: --runner pooling", "```", "",
              "sentence-transformers (any device; weights dequantised at load):", "", "```python",
              "from sentence_transformers import SentenceTransformer",
              "from transformers import CompressedTensorsConfig",
              f"model = SentenceTransformer({str(out)!r},",
              "    model_kwargs={'quantization_config': CompressedTensorsConfig(dequantize=True)})",
              "```", "",
              "or `compass.train.fp8_export.load_fp8(path)` for FP8 weights and activations simulated.", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    (out / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
