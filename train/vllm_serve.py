"""What a model folder needs for vLLM to embed exactly as sentence-transformers does, and the parity check.

vLLM (0.32, read from its source: vllm/transformers_utils/config.py, vllm/config/model.py and
vllm/entrypoints/pooling/embed/io_processor.py) takes from a sentence-transformers folder:
- modules.json: the Pooling module's folder and whether a Normalize module follows. vLLM 0.32 knows the
  sentence-transformers 6 class paths; older vLLM matches only `sentence_transformers.models.Pooling` / `.Normalize`
  and silently falls back to the architecture's default pooling (CLS for BERT) without them. Those legacy names still
  load in sentence-transformers 6, so they are written.
- <pooling>/config.json: the first key whose value is `true` (older vLLM) or `pooling_mode` (0.32). sentence-
  transformers 6 writes only `pooling_mode`, and its `include_prompt: true` would be read by an older vLLM as the
  pooling mode; so the legacy `pooling_mode_<mode>_tokens: true` key is written first (sentence-transformers drops it
  on load when `pooling_mode` is present).
- sentence_bert_config.json `max_seq_length` (and `do_lower_case`): vLLM's token limit. sentence-transformers 6
  keeps the limit in tokenizer_config.json instead, which vLLM does not read: without it vLLM uses
  max_position_embeddings and embeds past the model's limit (measured: min cosine 0.9953 instead of 1.0 on a model
  trained with a 48-token limit and 64 positions).
- config_sentence_transformers.json `prompts`: applied by the server's Cohere-style `/v2/embed` for
  `input_type: "query"` (etc.); `/v1/embeddings` and `LLM.embed` take the text as it is, so the client prepends
  the prompt. vLLM cannot drop prompt tokens from pooling (`include_prompt: false`): flagged as a problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from compass.errors import CompassError

WORKER = Path(__file__).with_name("vllm_worker.py")
LEGACY_TYPES = {"Pooling": "sentence_transformers.models.Pooling",
                "Normalize": "sentence_transformers.models.Normalize"}
# sentence-transformers pooling mode -> the legacy boolean key older vLLM parses (vLLM pools only these three)
VLLM_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
                "lasttoken": "pooling_mode_lasttoken"}
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            # engine core in this process: one spawned interpreter less (~20 s of imports on a busy CPU)
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
PARITY_MEAN, PARITY_MIN = 0.999, 0.995


def _read(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CompassError(f"{path}: unreadable ({e}); re-save the model with sentence-transformers") from e


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_vllm_config(folder: str | Path, model) -> dict:
    """Make the sentence-transformers folder `folder` (saved from the loaded `model`) pool, normalize and truncate in
    vLLM as `model` does. Returns {"pooling", "normalize", "max_seq_length", "prompts", "problems"}: problems are
    what vLLM cannot reproduce (serving would not give these embeddings)."""
    folder = Path(folder)
    modules = _read(folder / "modules.json")
    info: dict = {"pooling": None, "normalize": False, "max_seq_length": None, "prompts": dict(model.prompts or {}),
                  "problems": []}
    for entry, module in zip(modules, model):
        kind = type(module).__name__
        if kind in LEGACY_TYPES:
            entry["type"] = LEGACY_TYPES[kind]
        if kind == "Normalize":
            info["normalize"] = True
        elif kind == "Pooling":
            mode = module.pooling_mode
            info["pooling"] = mode if isinstance(mode, str) else "+".join(mode)
            cfg_path = folder / entry["path"] / "config.json"
            cfg = _read(cfg_path)
            if mode in VLLM_POOLING:
                cfg = {VLLM_POOLING[mode]: True, **{k: v for k, v in cfg.items() if k != VLLM_POOLING[mode]}}
                _write(cfg_path, cfg)
            else:
                info["problems"].append(f"pooling {info['pooling']!r}: vLLM pools only mean, cls or last token")
            if not module.include_prompt:
                info["problems"].append("include_prompt false: vLLM pools over the prompt tokens too")
        elif kind == "Transformer":
            info["max_seq_length"] = module.max_seq_length
            cfg_path = folder / entry["path"] / "sentence_bert_config.json"
            cfg = _read(cfg_path) if cfg_path.is_file() else {}
            if module.max_seq_length:
                cfg["max_seq_length"] = int(module.max_seq_length)
            cfg["do_lower_case"] = bool(getattr(module, "do_lower_case", False))
            _write(cfg_path, cfg)
        elif kind != "Dense":  # vLLM applies Dense modules too; anything else it does not know
            info["problems"].append(f"module {kind}: vLLM does not run it")
    _write(folder / "modules.json", modules)
    if info["pooling"] is None:
        info["problems"].append("no Pooling module: vLLM would use the architecture's default pooling")
    return info


def vllm_ready_copy(folder: Path, model, dst: Path) -> Path:
    """`folder` as vLLM should read it, at `dst`: its files copied, weights linked, vLLM config written (for a
    folder compass did not write, which it must leave as it is)."""
    import shutil

    for f in folder.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix in (".safetensors", ".bin"):
                target.symlink_to(f.resolve())
            else:
                shutil.copy2(f, target)
    write_vllm_config(dst, model)
    return dst


def serve_command(folder: str | Path) -> str:
    """The command that serves the folder as an embedding model (vLLM >= 0.10; older: --task embed)."""
    return f"vllm serve {Path(folder).resolve()} --runner pooling"


def find_vllm_python(explicit: str | Path | None = None) -> Path | None:
    """The Python that has vLLM: `explicit`, $COMPASS_VLLM_PYTHON, $COMPASS_VLLM_VENV/bin/python, else None."""
    cand = explicit or os.environ.get("COMPASS_VLLM_PYTHON")
    if not cand and os.environ.get("COMPASS_VLLM_VENV"):
        cand = Path(os.environ["COMPASS_VLLM_VENV"]) / "bin" / "python"
    if not cand:
        return None
    path = Path(cand)
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.is_file():
        raise CompassError(f"--vllm-python {cand}: no such Python; pass the python of a venv with vLLM "
                           "(e.g. .venv-vllm/bin/python, built by `make vllm-env`)")
    return Path(os.path.abspath(path))  # absolute, not resolved: a venv's python is a symlink to the base one


def vllm_embed(python: str | Path, models: dict[str, str | Path], texts: list[str], dtype: str = "float32",
               timeout: float = 600) -> dict:
    """Embed `texts` with each model through vLLM's offline `LLM.embed`, run by `python` (vLLM's own venv).
    Returns the worker's output: {"vllm", "device", "models": {name: {"embeddings", "max_model_len", "seconds"}}}."""
    with tempfile.TemporaryDirectory(prefix="compass-vllm-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        _write(job, {"models": [{"name": k, "path": str(Path(v).resolve())} for k, v in models.items()],
                     "texts": texts, "dtype": dtype})
        try:
            proc = subprocess.run([os.path.abspath(python), str(WORKER), str(job), str(out)], capture_output=True,
                                  text=True, env={**os.environ, **VLLM_ENV}, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired as e:
            raise CompassError(f"vLLM did not finish embedding in {timeout:.0f}s ({python})") from e
        result = json.loads(out.read_text()) if out.is_file() else {}
    if proc.returncode != 0 or "error" in result:
        tail = result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompassError(f"vLLM ({python}) could not embed with {', '.join(map(str, models.values()))}: {tail}")
    return result


def prompted(model, texts: list[str]) -> list[tuple[str | None, str]]:
    """(prompt name, text) for each text once per distinct prompt of the model (once, plain, when it has none):
    "document" and "passage" are often the same prompt, embedded once."""
    prompts = dict(model.prompts or {})
    names = list({p: n for n, p in reversed(list(prompts.items()))}.values()) if prompts else [None]
    return [(name, t) for name in names for t in texts]


def vllm_inputs(model, pairs: list[tuple[str | None, str]]) -> list[str]:
    """What vLLM's LLM.embed and /v1/embeddings need: the prompt prepended, as sentence-transformers does."""
    prompts = dict(model.prompts or {})
    return [prompts.get(name, "") + t if name else t for name, t in pairs]


def st_embed(model, pairs: list[tuple[str | None, str]]):
    """sentence-transformers' embeddings (float32 CPU tensor, rows in the order of `pairs`)."""
    import torch

    out = [None] * len(pairs)
    for name in dict.fromkeys(n for n, _ in pairs):
        idx = [i for i, (n, _) in enumerate(pairs) if n == name]
        emb = model.encode([pairs[i][1] for i in idx], prompt_name=name, convert_to_tensor=True,
                           show_progress_bar=False).float().cpu()
        for j, i in enumerate(idx):
            out[i] = emb[j]
    return torch.stack(out)


def cosine_figures(a, b) -> dict:
    import torch

    cos = torch.nn.functional.cosine_similarity(torch.as_tensor(a).float(), torch.as_tensor(b).float(), dim=-1)
    return {"mean_cos": round(float(cos.mean()), 6), "min_cos": round(float(cos.min()), 6), "n": int(cos.numel())}


def parity_line(fig: dict) -> str:
    ok = fig["mean_cos"] >= PARITY_MEAN and fig["min_cos"] >= PARITY_MIN
    return (f"mean cosine {fig['mean_cos']:.5f}, min {fig['min_cos']:.5f} on {fig['n']} texts "
            f"({'PASS' if ok else 'FAIL'}: >= {PARITY_MEAN} / {PARITY_MIN})")
