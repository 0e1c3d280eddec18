"""benchmarks/gpu_train.py end to end on a CPU (--smoke): bundle from a catalog, a random model of the chosen shape,
the three losses timed, the first-step loss compared across precisions. It checks the script, not a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_train import small_catalog  # noqa: F401 (fixture)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"


@pytest.mark.slow
def test_gpu_benchmark_smoke_on_cpu(tmp_path, small_catalog):  # noqa: F811
    bundle = tmp_path / "bundle"
    subprocess.run([sys.executable, str(SCRIPT), "prepare", "--out", str(bundle), "--catalog", str(small_catalog)],
                   check=True, capture_output=True, text=True)
    assert (bundle / "dataset").is_dir() and (bundle / "bundle.json").exists()
    # the fit side must not need the catalog's or the filters' packages (the GPU machine has none of them)
    probe = ("import sys; import compass.train.trainer, compass.train.data, compass.train.cam_loss; "
             "print(sorted(m for m in ('duckdb', 'polars', 'fasttext', 'vllm') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() \
        == "[]"
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--bundle", str(bundle), "--smoke", "--steps", "3",
                           "--batch-size", "8", "--mini-batch-size", "4"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for name in ("CAM", "CachedCAM", "MNRL"):
        assert f"{name:9s}:" in out and "samples/s" in out
    assert "CAM/MNRL step-time ratio at batch 8" in out
    line = next(x for x in out.splitlines() if x.startswith("first-step loss"))
    assert "cpu bf16" in line and "cpu fp32" in line and "|diff|" in line
    assert "eval macro: skipped (random weights)" in out
