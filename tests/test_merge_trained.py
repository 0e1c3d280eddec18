"""`compass merge` on checkpoints that `compass train` wrote: a base and its continued training."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from test_train import small_catalog  # noqa: F401  (fixture)


@pytest.mark.slow
def test_merge_and_sweep_models_trained_by_compass(tmp_path, small_catalog):  # noqa: F811
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--max-steps", "4", "--batch-size", "16", "--vocab-size", "400", "--embedding-dim", "32"]
    run_cli("train", "--out", str(a), *common, catalog=small_catalog)
    # B continues from A (same tokenizer), with a high learning rate so the tensors really move apart
    run_cli("train", "--base", str(a), "--out", str(b), "--loss", "infonce", "--lr", "5", "--seed", "3",
            "--max-steps", "4", "--batch-size", "16", catalog=small_catalog)
    run_cli("merge", str(a), str(b), "--t", "0.5", "--out", str(tmp_path / "m"))
    wa, wb, wm = (load_file(str(p / "model.safetensors"))["embedding.weight"].double() for p in (a, b, tmp_path / "m"))
    assert not torch.equal(wa, wb)
    ang = lambda x, y: torch.arccos(torch.clamp(x.flatten() @ y.flatten() / (x.norm() * y.norm()), -1, 1))  # noqa: E731
    assert float(ang(wa, wm)) == pytest.approx(0.5 * float(ang(wa, wb)), rel=1e-3)

    tasks = tmp_path / "tasks" / "cls"
    tasks.mkdir(parents=True)
    rows = [{"text": t, "label": label} for t, label in [("รองเท้า ผ้าใบ", "shoe"), ("giày thể thao", "shoe"),
                                                 ("kemeja pria", "shirt"), ("เสื้อ ยืด", "shirt")] * 3]
    for split in ("train", "test"):
        (tasks / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    proc = run_cli("merge", str(a), str(b), "--sweep", "0,0.5,1", "--eval", str(tmp_path / "tasks"),
                   "--out", str(tmp_path / "s"))
    assert "<- best" in proc.stdout + proc.stderr
    info = json.loads((tmp_path / "s" / "compass_merge.json").read_text())
    best = max(info["sweep"], key=lambda r: (r["macro"], -r["t"]))
    assert [r["t"] for r in info["sweep"]] == [0.0, 0.5, 1.0] and info["t"] == best["t"]
    assert info["counts"]["slerp"] == 1 or info["t"] in (0.0, 1.0)
    assert f"{info['t']}" in (tmp_path / "s" / "README.md").read_text(encoding="utf-8")
