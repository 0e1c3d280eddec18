"""Shared pieces of the model-quality benchmarks (e5_finetune.py, data_ablation.py).

They drive the `compass` command itself (a subprocess per step), as a user would, so a benchmark measures what
users run and not a private code path. Each step's output folder doubles as its cache: rerunning a benchmark with
the same --work folder skips finished trainings and evaluations (delete the folder to start over).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TIMINGS: dict[str, float] = {}


def compass(*args: str, label: str | None = None) -> str:
    """Run `compass ARGS`; on failure print its output and stop (a benchmark must not report half a table)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "compass", *args], capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(f"\n$ compass {' '.join(args)}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}\n")
        raise SystemExit(f"compass {args[0]} failed (exit {p.returncode})")
    if label:
        TIMINGS[label] = time.perf_counter() - t0
        print(f"  {label}: {TIMINGS[label]:.0f} s", flush=True)
    return p.stdout


def build_catalog(path: Path, *, mine_model: str | None, extra_generate: tuple[str, ...] = (),
                  mine_args: tuple[str, ...] = ()) -> None:
    """The demo chain up to mining: bundled samples -> structured pairs -> filters -> split (-> negatives)."""
    if path.exists():
        return
    tmp = path.with_suffix(".building.duckdb")
    tmp.unlink(missing_ok=True)
    c = ("--catalog", str(tmp))
    compass("init", *c)
    compass("ingest", "--samples", *c)
    compass("generate", "--route", "structured", *extra_generate, *c)
    compass("filter", *c)
    compass("split", *c)
    if mine_model:
        compass("mine", "--model", mine_model, *mine_args, *c, label=f"mine {path.stem} ({mine_model})")
    tmp.rename(path)  # only a complete catalog is reused by a rerun


def model_path(name: str) -> str:
    return compass("models", "path", name).strip().splitlines()[-1]


def train(catalog: Path, out: Path, *args: str) -> Path:
    if not (out / "modules.json").exists():
        compass("train", "--out", str(out), *args, "--catalog", str(catalog), label=f"train {out.name}")
    return out


def evaluate(model: str | Path, eval_dir: Path, catalog: Path, out_json: Path) -> dict:
    if not out_json.exists():
        compass("eval", str(model), "--tasks", str(eval_dir), "--catalog-split", "test", "--catalog", str(catalog),
                "--json", str(out_json), label=f"eval {out_json.stem}")
    return json.loads(out_json.read_text(encoding="utf-8"))


def summarize(res: dict) -> dict[str, float | None]:
    """Per-task main scores (x100) and the macros the issues ask for, computed here from the per-task scores so the
    table does not depend on how `compass eval` groups them."""
    out: dict[str, float | None] = {}
    dev, dev_ret, dev_cls, cat = [], [], [], []
    for name, r in res["tasks"].items():
        v = 100 * r["main"]
        out[name] = v
        if r["source"] == "tasks":
            dev.append(v)
            (dev_ret if r["type"] == "retrieval" else dev_cls).append(v)
        else:
            cat.append(v)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    out.update({"dev macro": mean(dev), "dev retrieval": mean(dev_ret), "dev classification": mean(dev_cls),
                "catalog macro": mean(cat)})
    return out


def print_table(rows: dict[str, dict[str, float | None]], columns: list[str], title: str) -> str:
    """A markdown table: one row per model, one column per task/macro (x100, one decimal)."""
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    head = ["model", *columns]
    body = [[name, *(fmt(r.get(c)) for c in columns)] for name, r in rows.items()]
    lines = [f"\n{title}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def dev_columns(rows: dict[str, dict]) -> list[str]:
    first = next(iter(rows.values()))
    tasks = [k for k in first if not k.endswith("macro") and k not in ("dev retrieval", "dev classification")
             and not k.startswith("catalog_")]
    return [*tasks, "dev retrieval", "dev classification", "dev macro", "catalog macro"]
