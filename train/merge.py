"""Spherical (SLERP) merging of two sentence-transformers checkpoints.

The paper merges checkpoints on the sphere instead of averaging them: averaging two weight tensors that point in
different directions shrinks the result (the midpoint of a chord is shorter than the arc), which blurs what each
checkpoint learned. SLERP walks the arc instead.

Why not `SentenceTransformer.merge` (sentence-transformers >= 6.2)? It needs mergekit (which pulls accelerate, peft,
protobuf...) and mergekit's slerp works per output row on the raw tensors, which degenerates to plain linear
interpolation on every 1-D tensor (bias, LayerNorm) and lets the norm follow the slerp coefficients. The issue asks for
one angle per tensor with the norms interpolated linearly, and for byte-level checks of the tokenizer/pooling files,
so the ~40 lines of maths are written here; loading and saving go through sentence-transformers.

    from compass.train.merge import merge_models
    merge_models("runs/a", "runs/b", t=0.5, out="runs/merged")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compass.errors import CompassError

# |cos| above this counts as colinear: sin(theta) is then too small to divide by, and the arc and the chord coincide
# to within float error anyway (same threshold as mergekit).
DOT_THRESHOLD = 0.9995
# Files that hold weights or describe training, not the model's interface: never compared between A and B.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".onnx")
# Provenance and training-state files: they describe how a checkpoint was made, not how it computes.
SKIP_FILES = {"README.md", "compass_merge.json", "compass_train.json", "compass_fp8.json", "compass_model.json",
              ".gitattributes", "training_args.bin", "trainer_state.json"}
# Keys of JSON configs that record who saved a file, not what it does.
VOLATILE_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "__version__", "name_or_path",
                 "model_card_data", "_commit_hash",
                 # run-time state, not the model: training sets these (tokenizer.json, config.json)
                 "use_cache", "truncation", "padding"}


@torch.no_grad()
def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-8,
          dot_threshold: float = DOT_THRESHOLD) -> torch.Tensor:
    """Spherical interpolation between two same-shaped tensors, treated each as ONE flattened vector.

    direction: the unit vectors a/|a| and b/|b| span an angle theta = acos(<a/|a|, b/|b|>); the result's direction is
        sin((1-t) theta)/sin(theta) * a/|a| + sin(t theta)/sin(theta) * b/|b|, which is a unit vector at angle
        t*theta from a/|a| in the plane of a and b.
    norm: (1-t)|a| + t|b|, linear. Checkpoints of one model have close norms; interpolating them linearly keeps
        the result's scale between the two (a slerp of the raw tensors would let the scale dip), and with equal
        norms this is exactly the textbook slerp of the raw tensors.
    fallbacks: (1-t) a + t b when the directions are (anti)colinear (|cos| > dot_threshold) or a norm is ~0.
    t=0 returns a and t=1 returns b exactly (copies). Computes in float32 (float64 for float64 inputs) and
    returns the input dtype. Any shape: a, b (*S) -> (*S).
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"slerp t must be in [0, 1], got {t}")
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.reshape(-1).to(work), b.reshape(-1).to(work)
    na, nb = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
    linear = ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    if na <= eps or nb <= eps:
        return linear
    ua, ub = x / na, y / nb
    dot = torch.clamp(torch.dot(ua, ub), -1.0, 1.0)
    if dot.abs() > dot_threshold:
        return linear
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    direction = (torch.sin((1 - t) * theta) / sin_theta) * ua + (torch.sin(t * theta) / sin_theta) * ub
    return (((1 - t) * na + t * nb) * direction).reshape(a.shape).to(a.dtype)


def _is_colinear(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> bool:
    x, y = a.reshape(-1).double(), b.reshape(-1).double()
    na, nb = x.norm(), y.norm()
    return bool(na <= eps or nb <= eps or (torch.dot(x, y) / (na * nb)).abs() > DOT_THRESHOLD)


def _modules(path: Path) -> list[dict]:
    f = path / "modules.json"
    if not f.is_file():
        raise CompassError(f"{path}: no modules.json, not a sentence-transformers model folder; "
                           "pass a folder written by `compass train` or SentenceTransformer.save()")
    return json.loads(f.read_text())


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _interface_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.name not in SKIP_FILES and not p.name.startswith(".")
            and not p.name.endswith(WEIGHT_SUFFIXES) and ".ipynb_checkpoints" not in p.parts}


def check_same_interface(path_a: str | Path, path_b: str | Path) -> None:
    """A and B must share module layout, tokenizer, pooling, normalize and model config; else name the first file.

    JSON files are compared as data without the keys that only record versions/dtypes (VOLATILE_KEYS); every other
    non-weight file byte for byte (vocab.txt, tokenizer.json, ...).
    """
    a, b = Path(path_a), Path(path_b)
    ma, mb = _modules(a), _modules(b)
    # Class names, not import paths: sentence-transformers 6 saves `...base.modules.transformer.Transformer` where
    # older folders (and the e5-small conversion) say `sentence_transformers.models.Transformer`; both load alike.
    if [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in ma] != [(m["path"], m["type"].rsplit(".", 1)[-1])
                                                                  for m in mb]:
        raise CompassError(f"{b / 'modules.json'} differs from {a / 'modules.json'} (different architecture): "
                           "merge only checkpoints trained from the same base model")
    fa, fb = _interface_files(a), _interface_files(b)
    for name in sorted(fa | fb):
        if name not in fb or name not in fa:
            where, missing = (a, b) if name not in fb else (b, a)
            raise CompassError(f"{missing / name} is missing but {where / name} exists: both models must come from "
                               "the same base with the same tokenizer and modules")
        pa, pb = a / name, b / name
        if name.endswith(".json"):
            try:
                same = _strip(json.loads(pa.read_text())) == _strip(json.loads(pb.read_text()))
            except (json.JSONDecodeError, UnicodeDecodeError):
                same = pa.read_bytes() == pb.read_bytes()
        else:
            same = pa.read_bytes() == pb.read_bytes()
        if not same:
            raise CompassError(f"{pb} differs from {pa}: the tokenizer, pooling, normalize and config files must be "
                               "identical (merge checkpoints of one base model trained with one tokenizer)")


@dataclass
class _Pair:
    """Two loaded models whose state dicts were checked to match key by key."""
    path_a: Path
    path_b: Path
    model: object  # SentenceTransformer A, its weights overwritten per merge
    state_a: dict[str, torch.Tensor]
    state_b: dict[str, torch.Tensor]
    buffers: set[str] = field(default_factory=set)


def _load(path: Path):
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device="cpu")
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CompassError(f"{path}: sentence-transformers cannot load it ({first}): check that its weights match "
                           "its config.json") from e


def _local(name: str | Path) -> Path:
    """A model name (minilm, e5-small) or folder as a local folder: merging compares files, so hub ids are refused."""
    from compass.models import canonical, resolve_model

    if canonical(str(name)) is None:
        return Path(name)
    return Path(resolve_model(name))


def _load_pair(path_a: str | Path, path_b: str | Path) -> _Pair:
    a, b = _local(path_a), _local(path_b)
    for p in (a, b):
        if not p.is_dir():
            raise CompassError(f"{p}: model folder not found; pass the folder written by `compass train`")
    check_same_interface(a, b)
    model_a, model_b = _load(a), _load(b)
    sa = {k: v.detach().clone() for k, v in model_a.state_dict().items()}
    sb = {k: v.detach() for k, v in model_b.state_dict().items()}
    for key in list(sa) + [k for k in sb if k not in sa]:
        if key not in sb or key not in sa:
            side = "B" if key not in sb else "A"
            raise CompassError(f"tensor {key!r} is missing in model {side} ({b if side == 'B' else a}): "
                               "the models have different architectures; merge checkpoints of one base model")
        if sa[key].shape != sb[key].shape or sa[key].dtype != sb[key].dtype:
            raise CompassError(f"tensor {key!r} is {tuple(sa[key].shape)} {sa[key].dtype} in {a} but "
                               f"{tuple(sb[key].shape)} {sb[key].dtype} in {b}: merge checkpoints of one base model")
    buffers = {name for name, _ in model_a.named_buffers()}
    return _Pair(a, b, model_a, sa, sb, buffers)


def _merge_state(pair: _Pair, t: float) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    merged, counts = {}, {"slerp": 0, "linear": 0, "copied": 0}
    for key, ta in pair.state_a.items():
        tb = pair.state_b[key]
        # integer tensors (ids, position_ids) and buffers are bookkeeping, not learned: interpolating them is
        # meaningless, so A's are kept.
        if key in pair.buffers or not ta.is_floating_point():
            merged[key], counts["copied"] = ta.clone(), counts["copied"] + 1
            continue
        merged[key] = slerp(ta, tb, t)
        kind = "linear" if t in (0.0, 1.0) or _is_colinear(ta, tb) else "slerp"
        counts[kind] += 1
    return merged, counts


def _apply(pair: _Pair, t: float):
    state, counts = _merge_state(pair, t)
    pair.model.load_state_dict(state)
    pair.model.eval()
    return pair.model, counts


def _write_card(out: Path, info: dict) -> None:
    lines = [f"# {out.name}", "",
             "Merged with `compass merge` (compass-embed): per-tensor spherical interpolation (SLERP) of two "
             "sentence-transformers checkpoints; directions on the sphere, norms linear, linear fallback for "
             "colinear tensors; integer tensors and buffers, tokenizer, pooling and normalize from model A.", "",
             "| | |", "|---|---|",
             f"| model A (t=0) | `{info['model_a']}` |", f"| model B (t=1) | `{info['model_b']}` |",
             f"| chosen t | {info['t']} |",
             f"| tensors slerped / linear / copied | {info['counts']['slerp']} / {info['counts']['linear']} / "
             f"{info['counts']['copied']} |", ""]
    if info.get("sweep"):
        lines += [f"## Sweep (evaluated on `{info.get('eval')}`; best macro over tasks kept)", "",
                  "| t | macro (all tasks) | retrieval macro | classification macro |", "|---|---|---|---|"]
        lines += [f"| {r['t']} | {r['macro']:.4f}{' (chosen)' if r['t'] == info['t'] else ''} | "
                  f"{_fmt(r.get('retrieval'))} | {_fmt(r.get('classification'))} |" for r in info["sweep"]]
        lines.append("")
    lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer",
              f"model = SentenceTransformer({str(out)!r})", "```", ""]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "compass_merge.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")


def _save(pair: _Pair, t: float, out: Path, sweep: list[dict] | None = None, eval_dir=None) -> dict:
    model, counts = _apply(pair, t)
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    info = {"method": "slerp", "model_a": str(pair.path_a), "model_b": str(pair.path_b), "t": t,
            "counts": counts, "tensors": len(pair.state_a), "out": str(out)}
    if sweep is not None:
        info["sweep"], info["eval"] = sweep, str(eval_dir)
    _write_card(out, info)
    return info


def _check_t(t: float) -> float:
    if not (isinstance(t, (int, float)) and math.isfinite(t) and 0.0 <= t <= 1.0):
        raise CompassError(f"merge t={t!r} is out of range: use a value in [0, 1] (0 = model A, 1 = model B)")
    return float(t)


def merge_models(path_a: str | Path, path_b: str | Path, t: float, out: str | Path) -> dict:
    """Merge two sentence-transformers model folders at t (0 = A, 1 = B) into `out`; returns what was done."""
    t = _check_t(t)
    return _save(_load_pair(path_a, path_b), t, Path(out))


def sweep_merge(path_a: str | Path, path_b: str | Path, ts: list[float], tasks_dir: str | Path, out: str | Path,
                evaluator: Callable[[object, str | Path], dict] | None = None, echo: Callable[[str], None] = print,
                device: str | None = None, precision: str | None = None) -> dict:
    """Merge at every t, evaluate each with `evaluator(model, tasks_dir)["macro"]`, save the best to `out`.

    evaluator defaults to compass.train.evaluate.evaluate_model, scoring on `device` in `precision` (auto | cpu |
    cuda | cuda:N; auto | fp32 | bf16 | fp16). The merge itself always runs on the CPU in float32 (t=0 and t=1
    stay bit-exact); the evaluator scores a moved/cast copy, so the saved model keeps A's dtype. Ties go to the
    smaller t (closer to A).
    """
    ts = [_check_t(t) for t in ts]
    if not ts:
        raise CompassError("--sweep is empty: pass t values like 0,0.25,0.5,0.75,1")
    if evaluator is None:
        evaluator = default_evaluator(device, precision)
    pair = _load_pair(path_a, path_b)
    rows = []
    for t in ts:
        model, _ = _apply(pair, t)
        result = evaluator(model, tasks_dir)
        if "macro" not in result:
            raise CompassError(f"the evaluator returned no 'macro' key for t={t} (keys: {sorted(result)}); "
                               "it must return evaluate_model's dict")
        rows.append({"t": t, "macro": float(result["macro"]), "retrieval": result.get("retrieval_macro"),
                     "classification": result.get("classification_macro")})
        echo(f"t={t:<5} macro={rows[-1]['macro']:.4f} retrieval={_fmt(rows[-1]['retrieval'])} "
             f"classification={_fmt(rows[-1]['classification'])}")
    best = max(rows, key=lambda r: (r["macro"], -r["t"]))
    echo(format_sweep(rows, best["t"]))
    return _save(pair, best["t"], Path(out), sweep=rows, eval_dir=tasks_dir)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def format_sweep(rows: list[dict], chosen: float) -> str:
    """The sweep as a table: macro over all tasks (what picks t), retrieval and classification macros apart."""
    lines = ["t      macro   retrieval  classification", "-----  ------  ---------  --------------"]
    lines += [f"{r['t']:<5}  {r['macro']:.4f}  {_fmt(r.get('retrieval')):<9}  {_fmt(r.get('classification')):<14}"
              f"{'  <- best' if r['t'] == chosen else ''}".rstrip() for r in rows]
    return "\n".join(lines)


def default_evaluator(device: str | None = None, precision: str | None = None) -> Callable[[object, str | Path], dict]:
    """evaluate_model(model, tasks_dir) on a device and precision (None: where the model is, as it is)."""
    try:
        from compass.train.evaluate import evaluate_model
    except ImportError as e:
        raise CompassError(f"compass.train.evaluate is not available ({e}): install compass-embed[train] "
                           "or run without --eval") from e
    if device is None and precision is None:
        return evaluate_model
    import functools

    from compass.devices import resolve_device, resolve_precision

    resolve_precision(resolve_device(device or "auto"), precision)  # a bad value fails before any merging
    return functools.partial(evaluate_model, device=device or "auto", precision=precision or "auto")
