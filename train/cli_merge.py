"""`compass merge` and `compass export-fp8`: thin CLI over compass.train.merge and compass.train.fp8_export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.errors import CompassError

DeviceOpt = Annotated[str, typer.Option("--device", help="Where models are scored: auto | cpu | cuda | cuda:N (auto: "
                                                         "CUDA when present).")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, fp32 "
                                                               "on CPU).")]


def _parse_ts(value: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError as e:
        raise CompassError(f"--sweep {value!r} is not a list of numbers: use e.g. --sweep 0,0.25,0.5,0.75,1") from e


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge_cmd(
        model_a: Annotated[str, typer.Argument(help="sentence-transformers folder A (t=0), or a model name "
                                                    "(e5-small, minilm).")],
        model_b: Annotated[str, typer.Argument(help="sentence-transformers folder B (t=1), same base as A.")],
        out: Annotated[Path, typer.Option("--out", help="Folder to write the merged model to.")],
        t: Annotated[Optional[float], typer.Option("--t", help="Interpolation point in [0, 1].")] = None,
        sweep: Annotated[Optional[str],
                         typer.Option("--sweep", help="t values to try, e.g. 0,0.25,0.5,0.75,1.")] = None,
        eval_dir: Annotated[Optional[Path], typer.Option("--eval", help="Eval tasks folder for --sweep.")] = None,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
    ) -> None:
        """SLERP-merge two checkpoints of one model (per tensor); with --sweep, keep the t with the best macro."""
        from compass.train.merge import merge_models, sweep_merge

        if sweep is not None:
            if t is not None:
                raise CompassError("--t and --sweep exclude each other: pass one")
            if eval_dir is None:
                raise CompassError("--sweep needs --eval TASKS_DIR to choose the best t")
            info = sweep_merge(model_a, model_b, _parse_ts(sweep), eval_dir, out, echo=typer.echo, device=device,
                               precision=precision)
        else:
            if t is None:
                raise CompassError("pass --t T (e.g. --t 0.5) or --sweep 0,0.25,0.5,0.75,1 --eval TASKS_DIR")
            info = merge_models(model_a, model_b, t, out)
        c = info["counts"]
        typer.echo(f"merged t={info['t']} -> {out} ({c['slerp']} tensors slerped, {c['linear']} linear, "
                   f"{c['copied']} copied from A)")

    @app.command("export-fp8")
    def export_fp8_cmd(
        model: Annotated[str, typer.Argument(help="sentence-transformers transformer model folder, or a model name "
                                                  "(e5-small, minilm).")],
        out: Annotated[Path, typer.Option("--out", help="Folder to write the FP8 export to.")],
        scheme: Annotated[str, typer.Option("--scheme", help="dynamic: FP8 weights per channel, "
                                                              "activations per token at run time.")] = "dynamic",
        dtype: Annotated[str, typer.Option("--dtype", help="Unquantised tensors: bfloat16 | keep (keep: a float32 "
                                                            "model's export is larger than BF16 and fails the "
                                                            "gate).")] = "bfloat16",
        gate_texts: Annotated[Optional[Path], typer.Option("--gate-texts", help="JSONL of {lang, text} for the "
                                                                              "fidelity gate.")] = None,
        eval_dir: Annotated[Optional[Path], typer.Option("--eval", help="Eval tasks: gate also per language on "
                                                                      "nDCG@10 / accuracy (at most 1 point "
                                                                      "lost).")] = None,
        vllm_python: Annotated[Optional[Path], typer.Option("--vllm-python", help="Python of a venv with vLLM (e.g. "
                                                                                  ".venv-vllm/bin/python): serve "
                                                                                  "the export through LLM.embed "
                                                                                  "and record the parity.")] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
        device: DeviceOpt = "auto",
        precision: PrecisionOpt = "auto",
    ) -> None:
        """FP8 (compressed-tensors, vLLM-ready) export with a fidelity gate; exits 1 below the gate."""
        from compass.train.fp8_export import GATE_MEAN_COS, GATE_MIN_COS, export_fp8
        from compass.train.vllm_serve import parity_line

        info = export_fp8(model, out, scheme=scheme, dtype=dtype, gate_texts=gate_texts, tasks_dir=eval_dir,
                          overwrite=overwrite, device=device, precision=precision, vllm_python=vllm_python,
                          echo=lambda line: typer.echo(line, err=True))
        g, s = info["gate"], info["sizes"]
        typer.echo(f"gate PASSED: mean cosine {g['mean_cos']:.5f} (>= {GATE_MEAN_COS}), min {g['min_cos']:.5f} "
                   f"(>= {GATE_MIN_COS}) on {g['n_texts']} texts; size {g['size_ratio']:.2f}x BF16 (< 1)")
        for key, c in g.get("task_change", {}).items():
            typer.echo(f"{key}: {c['original']:.2f} -> {c['fp8']:.2f} ({c['change']:+.2f} points)")
        typer.echo(f"size: {s['fp8'] / 1e6:.1f} MB FP8 vs {s['bf16'] / 1e6:.1f} MB BF16 "
                   f"({s['fp8'] / max(s['bf16'], 1):.2f}x), original {s['original'] / 1e6:.1f} MB -> {out}")
        for problem in info["serving"]["problems"]:
            typer.echo(f"vLLM will not match: {problem}", err=True)
        p = info.get("vllm_parity")
        if p:
            typer.echo(f"vLLM {p['vllm']} ({p['device']}) original vs sentence-transformers: "
                       f"{parity_line(p['original_vs_st'])}")
            typer.echo(f"vLLM {p['vllm']} ({p['device']}) FP8 export vs compass's FP8 simulation: "
                       f"{parity_line(p['fp8_vs_simulation'])}")
        typer.echo(f"serve: {info['serving']['command']}")
