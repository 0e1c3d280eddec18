"""`--device` and `--precision`, parsed one way for every model stage (train, eval, mine, merge, export gate).

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N") -> "cpu" | "cuda:N"``: auto takes the first CUDA device when
torch sees one. ``resolve_precision(device, "auto" | "fp32" | "bf16" | "fp16") -> torch.dtype``: auto is bf16 on
CUDA (fp16 on GPUs without bf16) and fp32 on CPU. What the dtype means is the caller's: the trainer turns bf16/fp16
into mixed precision (fp32 master weights, autocast); encoders may load their weights in it.

torch is imported inside the functions: `compass --help` must not pay for it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from compass.errors import CompassError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N"
PRECISION_CHOICES = "auto | fp32 | bf16 | fp16"
_ALIASES = {"fp32": "fp32", "float32": "fp32", "32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
            "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16"}


def resolve_device(device: str | None = "auto") -> str:
    """The concrete device ('cpu' or 'cuda:N') for a --device value; one clear error when it does not exist."""
    import torch

    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if d == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", d)
    if not m:
        raise CompassError(f"--device {device!r}: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise CompassError(f"--device {device}: torch {torch.__version__} sees no CUDA device "
                           "(no GPU, or a CPU-only torch build): use --device cpu (or auto)")
    index = int(m.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise CompassError(f"--device {device}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return f"cuda:{index}"


def device_index(device: str) -> int | None:
    """N of 'cuda:N' (None for cpu)."""
    return int(device.split(":")[1]) if device.startswith("cuda:") else (0 if device == "cuda" else None)


def resolve_precision(device: str, precision: str | None = "auto") -> torch.dtype:
    """torch.float32 / bfloat16 / float16 for a --precision value on a resolved device."""
    import torch

    p = (precision or "auto").strip().lower()
    on_cuda = device.startswith("cuda")
    if p == "auto":
        if not on_cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    name = _ALIASES.get(p)
    if name is None:
        raise CompassError(f"--precision {precision!r}: use {PRECISION_CHOICES}")
    if name == "fp16" and not on_cuda:
        raise CompassError("--precision fp16 needs a CUDA device (CPU autocast is bf16): use bf16 or fp32 on CPU")
    if name == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise CompassError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16: use fp16")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_name(dtype: torch.dtype) -> str:
    """'fp32' | 'bf16' | 'fp16' for a dtype resolve_precision returned (for configs, logs, cards)."""
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
