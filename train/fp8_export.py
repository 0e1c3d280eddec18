"""FP8 export of a transformer sentence-transformers model, in the compressed-tensors format vLLM loads.

What is written: every nn.Linear inside the transformer (pooler excepted) as float8_e4m3fn weights with one scale per
output channel (max|w| / 448, what llm-compressor's min-max observer gives for the CHANNEL strategy) and the
FP8_DYNAMIC preset, i.e. activations quantised per token at run time by the server; embeddings, norms and biases keep
their dtype. compressed-tensors owns the format (scheme, packing, `quantization_config` in config.json); this module
only computes the scales, because the observers live in llm-compressor, which pins an older transformers than the one
installed here. sentence-transformers writes the wrapper (modules.json, pooling, normalize, tokenizer).

The export always ends with a fidelity gate on the CPU (`verify_export`): the folder is loaded back through
sentence-transformers -> transformers -> compressed-tensors, decompressed, and run with compressed-tensors'
fake-quantised forward (FP8 weights AND per-token FP8 activations, the numerics vLLM runs), then compared with the
original model on fixed multilingual texts (and, with --eval, per language on eval tasks); the checkpoint must also be
smaller than a BF16 copy. Below the gate the folder is marked FAILED. The folder is made vLLM-ready
(compass.train.vllm_serve) and, given vLLM's Python, served through LLM.embed to measure parity.

    from compass.train.fp8_export import export_fp8
    export_fp8("runs/model", "runs/model-fp8")
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from compass.errors import CompassError
from compass.models import resolve_model
from compass.train import fp8_card, vllm_serve

GATE_MEAN_COS = 0.995
GATE_MIN_COS = 0.98
GATE_MAX_POINTS_LOST = 1.0   # nDCG@10 / accuracy points (x100) any language may lose on --eval tasks
GATE_MAX_SIZE_RATIO = 1.0    # the export must be smaller than the same weights in BF16
DEFAULT_GATE_TEXTS = Path(__file__).parent / "data" / "gate_texts.jsonl"
SCHEMES = {"dynamic": "FP8_DYNAMIC"}
# The BERT pooler is not used by sentence-transformers pooling; left in its dtype so loaders that skip it lose nothing.
IGNORE = ["re:.*pooler.*"]
FAILED_MARKER = "FAILED"
DTYPES = {"bfloat16": torch.bfloat16, "keep": None}
# Measured on an H200 (issue 16): torch._scaled_mm, row-wise scales, 32,768 tokens, against BF16 matmul.
SMALL_HIDDEN = 768
SPEED_NOTE = ("hidden size {hidden} < 768: FP8 is not expected to be faster than BF16 on current GPUs. Measured on "
              "an H200 at e5-small shapes (384/1536): the FP8 GEMM alone is 1.06x (up-proj) / 1.50x (down-proj) BF16, "
              "and 0.38x / 0.14x with an unfused per-token activation quantization; FP8 pays from e5-base size "
              "(768/3072: 1.32x / 1.63x GEMM alone) when the quantization is fused (vLLM, torch.compile'd torchao). "
              "Exporting anyway: the checkpoint is still smaller.")


@dataclass
class GateResult:
    mean_cos: float
    min_cos: float
    n_texts: int
    per_lang: dict[str, float]
    macro_original: float | None = None
    macro_fp8: float | None = None
    # "<lang> ndcg@10" / "<lang> accuracy" -> {"original", "fp8", "change"} in points (x100)
    task_change: dict[str, dict[str, float]] = field(default_factory=dict)
    size_ratio: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def load_gate_texts(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(lang, text) pairs from a JSONL file of {"lang": ..., "text": ...} lines."""
    path = Path(path) if path else DEFAULT_GATE_TEXTS
    if not path.is_file():
        raise CompassError(f"gate texts file {path} not found: pass --gate-texts with a JSONL of "
                           '{"lang": ..., "text": ...} lines')
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CompassError(f"{path}:{i}: bad gate text line ({e}): each line must be "
                               '{"lang": ..., "text": ...}') from e
        if not isinstance(text, str) or not text.strip():
            raise CompassError(f"{path}:{i}: empty 'text': every gate line needs a non-empty text")
        out.append((str(row.get("lang", "?")), text))
    if not out:
        raise CompassError(f"{path}: no gate texts: add JSONL lines {{\"lang\": ..., \"text\": ...}}")
    return out


def _load_st(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    from sentence_transformers import SentenceTransformer

    p = Path(path)
    if not (p / "modules.json").is_file():
        raise CompassError(f"{p}: no modules.json, not a sentence-transformers model folder; "
                           "pass a folder written by `compass train` or SentenceTransformer.save()")
    model = SentenceTransformer(str(p), device=device)
    return model.to(dtype) if dtype is not None else model


def gate_device(device: str | None = None, precision: str | None = None) -> tuple[str, torch.dtype]:
    """(device, dtype) the gate runs in: --device auto | cpu | cuda | cuda:N, --precision auto | fp32 | bf16 | fp16
    (auto: bf16 on CUDA, fp32 on CPU, so the CPU gate is what it always was)."""
    from compass.devices import resolve_device, resolve_precision

    dev = resolve_device(device or "auto")
    return dev, resolve_precision(dev, precision or "auto")


def _transformer_module(model, path) -> tuple[int, object]:
    from sentence_transformers.base.modules import Transformer

    for idx, module in enumerate(model):
        if isinstance(module, Transformer):
            return idx, module
    kinds = ", ".join(type(m).__name__ for m in model)
    if any(type(m).__name__ == "StaticEmbedding" for m in model):
        raise CompassError(f"{path} is a StaticEmbedding model: FP8 export is for transformer models (a static "
                           "model is a lookup table, already fast on CPU); serve it as it is")
    raise CompassError(f"{path} has no transformer module ({kinds}): FP8 export is for transformer models")


def load_fp8(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load an FP8 export, decompressed, with FP8 fake-quantised forward (vLLM's numerics), on `device` with the
    unquantised tensors and activations in `dtype` (default: as saved).

    Plain `SentenceTransformer(path)` loads the compressed weights; compressed-tensors decompresses them in a forward
    pre-hook, which sentence-transformers (it calls `model.forward` directly) never triggers, so decompress here
    (on the CPU, then move).
    """
    model = _load_st(path)
    _, module = _transformer_module(model, path)
    hf = module.auto_model
    quantizer = getattr(hf, "hf_quantizer", None)
    if quantizer is None or not hasattr(quantizer, "compressor"):
        raise CompassError(f"{path}: config.json has no compressed-tensors quantization_config; "
                           "this is not an FP8 export (run `compass export-fp8` first)")
    quantizer.compressor.decompress_model(hf)
    model.to(device)
    return model.to(dtype) if dtype is not None else model


@torch.no_grad()
def quantize_fp8_(model, scheme: str = "dynamic", dtype: str = "bfloat16") -> tuple[object, list[str]]:
    """Quantise the transformer of a loaded SentenceTransformer in place; returns (ModelCompressor, layer names).

    dtype: "bfloat16" (default) casts the unquantised tensors (embeddings, norms, biases) first, which halves a
    float32 model's embedding table (FP8 kernels run on bf16 activations anyway); "keep" leaves them as they are
    (a float32 MiniLM export is then 1.30x the size of a BF16 copy and fails the size gate).
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams

    if scheme not in SCHEMES:
        raise CompassError(f"unknown FP8 scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if dtype not in DTYPES:
        raise CompassError(f"unknown --dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    _, module = _transformer_module(model, "model")
    hf = module.auto_model
    if DTYPES[dtype] is not None:
        hf.to(DTYPES[dtype])
    config = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(SCHEMES[scheme], ["Linear"])},
                                ignore=IGNORE)
    apply_quantization_config(hf, config, show_progress=False)
    names = []
    for name, layer in hf.named_modules():
        args = getattr(getattr(layer, "quantization_scheme", None), "weights", None)
        if args is None:
            continue
        w = layer.weight.detach().float()  # (out, in)
        scale, zero_point = calculate_qparams(w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True), args)
        layer.weight_scale.data.copy_(scale.to(layer.weight_scale.dtype))  # (out, 1)
        layer.weight_zero_point.data.copy_(zero_point.to(layer.weight_zero_point.dtype))
        names.append(name)
    if not names:
        raise CompassError("the transformer has no nn.Linear layers to quantise: FP8 export needs a transformer model")
    compressor = ModelCompressor.from_pretrained_model(hf, quantization_format="float-quantized")
    compressor.compress_model(hf)
    return compressor, names


def _module_dir(out: Path, idx: int) -> Path:
    modules = json.loads((out / "modules.json").read_text())
    return out / modules[idx]["path"]


def checkpoint_sizes(original: str | Path, export_dir: str | Path) -> dict[str, int]:
    """Bytes on disk of the weight files, and of the same weights as a BF16 checkpoint (computed, not written)."""
    from safetensors import safe_open

    def disk(root: Path) -> int:
        return sum(p.stat().st_size for p in root.rglob("*") if p.suffix in (".safetensors", ".bin"))

    bf16 = 0
    for f in Path(original).rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                sl = st.get_slice(key)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                dtype = sl.get_dtype()
                floating = dtype in ("F32", "F16", "BF16", "F64")
                bf16 += numel * (2 if floating else {"I64": 8, "I32": 4, "BOOL": 1, "U8": 1, "I8": 1}.get(dtype, 8))
    return {"original": disk(Path(original)), "bf16": bf16, "fp8": disk(Path(export_dir))}


def _embed(model, texts: list[str]) -> torch.Tensor:
    return model.encode(texts, batch_size=32, convert_to_tensor=True, normalize_embeddings=True,
                        show_progress_bar=False).float()


def run_gate(original, exported, texts: list[tuple[str, str]], tasks_dir=None,
             evaluator: Callable | None = None) -> GateResult:
    """Compare two loaded models on the gate texts (and tasks); pure, writes nothing."""
    sentences = [t for _, t in texts]
    cos = torch.nn.functional.cosine_similarity(_embed(original, sentences), _embed(exported, sentences), dim=-1)
    per_lang: dict[str, list[float]] = {}
    for (lang, _), c in zip(texts, cos.tolist()):
        per_lang.setdefault(lang, []).append(c)
    result = GateResult(mean_cos=float(cos.mean()), min_cos=float(cos.min()), n_texts=len(sentences),
                        per_lang={k: sum(v) / len(v) for k, v in per_lang.items()})
    worst = sentences[int(cos.argmin())]
    if result.mean_cos < GATE_MEAN_COS:
        result.failures.append(f"mean cosine {result.mean_cos:.4f} < {GATE_MEAN_COS}")
    if result.min_cos < GATE_MIN_COS:
        result.failures.append(f"min cosine {result.min_cos:.4f} < {GATE_MIN_COS} (on {worst[:40]!r})")
    if tasks_dir is not None:
        if evaluator is None:
            from compass.train.merge import default_evaluator
            evaluator = default_evaluator()
        r0, r1 = evaluator(original, tasks_dir), evaluator(exported, tasks_dir)
        result.macro_original, result.macro_fp8 = float(r0["macro"]), float(r1["macro"])
        _task_changes(result, r0, r1)
    return result


def _task_changes(result: GateResult, r0: dict, r1: dict) -> None:
    """Per language, the change of nDCG@10 (retrieval macro) and accuracy (classification macro) in points; a loss
    of more than GATE_MAX_POINTS_LOST anywhere fails. r0/r1: evaluate_model results (original, FP8)."""
    for lang, m0 in sorted(r0.get("languages", {}).items()):
        m1 = r1.get("languages", {}).get(lang, {})
        for metric, label in (("retrieval", "ndcg@10"), ("classification", "accuracy")):
            if m0.get(metric) is None or m1.get(metric) is None:
                continue
            a, b = 100 * float(m0[metric]), 100 * float(m1[metric])
            result.task_change[f"{lang} {label}"] = {"original": round(a, 2), "fp8": round(b, 2),
                                                     "change": round(b - a, 2)}
            if b - a < -GATE_MAX_POINTS_LOST:
                result.failures.append(f"{lang} {label} {a:.2f} -> {b:.2f} ({b - a:+.2f} points, more than "
                                       f"{GATE_MAX_POINTS_LOST:g} lost)")


def verify_export(original: str | Path, export_dir: str | Path, gate_texts: str | Path | None = None,
                  tasks_dir=None, evaluator: Callable | None = None, extra: dict | None = None,
                  device: str | None = None, precision: str | None = None) -> GateResult:
    """The gate on an export folder: figures into README.md; FAILED marker + CompassError when below the gate.
    Both models run on `device` in `precision` (see gate_device)."""
    from compass.devices import precision_name

    export_dir = Path(export_dir)
    texts = load_gate_texts(gate_texts)
    dev, dtype = gate_device(device, precision)
    result = run_gate(_load_st(original, dev, dtype), load_fp8(export_dir, dev, dtype), texts, tasks_dir, evaluator)
    sizes = checkpoint_sizes(original, export_dir)
    result.size_ratio = round(sizes["fp8"] / max(sizes["bf16"], 1), 4)
    if result.size_ratio >= GATE_MAX_SIZE_RATIO:
        result.failures.append(f"size {result.size_ratio:.2f}x a BF16 copy (must be < {GATE_MAX_SIZE_RATIO:g}; "
                               "export with --dtype bfloat16)")
    info = {"original": str(original), "gate": {**asdict(result), "passed": result.passed},
            "gate_texts": str(gate_texts or DEFAULT_GATE_TEXTS), "tasks": str(tasks_dir) if tasks_dir else None,
            "thresholds": {"mean_cos": GATE_MEAN_COS, "min_cos": GATE_MIN_COS,
                           "max_points_lost": GATE_MAX_POINTS_LOST, "max_size_ratio": GATE_MAX_SIZE_RATIO},
            "sizes": sizes, "gate_device": dev, "gate_precision": precision_name(dtype), **(extra or {})}
    fp8_card.write_card(export_dir, info)
    marker = export_dir / FAILED_MARKER
    if result.passed:
        marker.unlink(missing_ok=True)
        return result
    marker.write_text("; ".join(result.failures) + "\n", encoding="utf-8")
    raise CompassError(f"FP8 fidelity gate failed for {export_dir}: {'; '.join(result.failures)}; the export is "
                       f"marked {FAILED_MARKER}: do not serve it (keep the BF16 model or exclude the failing layers)")


def measure_vllm_parity(python: str | Path, original: str | Path, export_dir: str | Path,
                        gate_texts: str | Path | None = None) -> dict:
    """Serve the original model and the FP8 export through vLLM's offline LLM.embed (with `python`, vLLM's venv;
    float32) on the gate texts, once per prompt of the model, and compare: the original with sentence-transformers,
    the export with compass's FP8 simulation (what the gate measured) and with the original."""
    import tempfile

    texts = [t for _, t in load_gate_texts(gate_texts)]
    orig = _load_st(original, "cpu", torch.float32)
    pairs = vllm_serve.prompted(orig, texts)
    with tempfile.TemporaryDirectory(prefix="compass-parity-") as tmp:
        ready = vllm_serve.vllm_ready_copy(Path(original), orig, Path(tmp) / "original")
        res = vllm_serve.vllm_embed(python, {"original": ready, "fp8": export_dir}, vllm_serve.vllm_inputs(orig, pairs))
    ref = vllm_serve.st_embed(orig, pairs)
    sim = vllm_serve.st_embed(load_fp8(export_dir, "cpu", torch.float32), pairs)
    e0, e8 = res["models"]["original"]["embeddings"], res["models"]["fp8"]["embeddings"]
    return {"vllm": res["vllm"], "device": res["device"], "dtype": "float32", "api": "LLM.embed",
            "prompts": sorted({n for n, _ in pairs if n}), "max_model_len": res["models"]["fp8"]["max_model_len"],
            "original_vs_st": vllm_serve.cosine_figures(e0, ref),
            "fp8_vs_simulation": vllm_serve.cosine_figures(e8, sim),
            "fp8_vs_original_st": vllm_serve.cosine_figures(e8, ref)}


def export_fp8(model_path: str | Path, out: str | Path, scheme: str = "dynamic", dtype: str = "bfloat16",
               gate_texts: str | Path | None = None, tasks_dir=None, evaluator: Callable | None = None,
               overwrite: bool = False, device: str | None = None, precision: str | None = None,
               vllm_python: str | Path | None = None, echo: Callable[[str], None] | None = None) -> dict:
    """Quantise (on the CPU), save (vLLM-ready) and gate (on `device` in `precision`, see gate_device); with
    `vllm_python`, measure parity through vLLM. Returns the card's info dict (gate figures, sizes, vLLM); raises
    CompassError on failure."""
    out = Path(out)
    model_path = resolve_model(model_path)  # minilm, e5-small (converted on first use), a folder, or a hub id
    load_gate_texts(gate_texts)  # fail on a bad texts file before the slow part
    gate_device(device, precision)  # and on a bad --device / --precision
    python = vllm_serve.find_vllm_python(vllm_python) if vllm_python else None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CompassError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
        shutil.rmtree(out)
    model = _load_st(model_path)
    idx, module = _transformer_module(model, model_path)
    hidden = getattr(module.auto_model.config, "hidden_size", None)
    note = SPEED_NOTE.format(hidden=hidden) if hidden and hidden < SMALL_HIDDEN else None
    if note and echo:
        echo(note)
    compressor, names = quantize_fp8_(model, scheme, dtype)
    model.save(str(out))
    # transformers writes config.json without the compressed-tensors block: add it where the transformer lives
    compressor.update_config(str(_module_dir(out, idx)))
    serving = vllm_serve.write_vllm_config(out, model)
    del model
    extra = {"scheme": scheme, "dtype": dtype, "preset": SCHEMES[scheme], "quantized_layers": len(names),
             "ignore": IGNORE, "hidden_size": hidden, "speed_note": note,
             "serving": {**serving, "command": vllm_serve.serve_command(out)}}
    verify_export(model_path, out, gate_texts, tasks_dir, evaluator, extra=extra, device=device, precision=precision)
    info = json.loads((out / fp8_card.INFO_FILE).read_text())
    if python is not None:
        parity = measure_vllm_parity(python, model_path, out, gate_texts)
        info["vllm_parity"] = parity
        fp8_card.write_card(out, info)
        bad = [k for k in ("original_vs_st", "fp8_vs_simulation")
               if parity[k]["mean_cos"] < vllm_serve.PARITY_MEAN or parity[k]["min_cos"] < vllm_serve.PARITY_MIN]
        if bad:
            raise CompassError(f"vLLM {parity['vllm']} does not embed like sentence-transformers ({', '.join(bad)}: "
                               f"{'; '.join(vllm_serve.parity_line(parity[k]) for k in bad)}); see {out}/README.md")
    return info
