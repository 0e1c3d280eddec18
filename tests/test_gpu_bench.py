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


SWEEP = SCRIPT.parent / "gpu_e5_sweep.py"


def _tiny_tasks(root: Path) -> Path:
    """One classification and one retrieval task in eval-dev's layouts (a fixture, not eval-dev)."""
    import json

    cls = root / "en_tiny_category"
    cls.mkdir(parents=True)
    words = {"shoe": ["running shoe", "leather shoe", "kids shoe", "canvas shoe"],
             "phone": ["smart phone", "phone case", "phone charger", "old phone"]}
    rows = [{"text": f"{t} {i}", "label": lab} for i in range(3) for lab, ts in words.items() for t in ts]
    for name, part in (("train.jsonl", rows[:16]), ("test.jsonl", rows[16:])):
        (cls / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    ret = root / "en_tiny_search"
    (ret / "qrels").mkdir(parents=True)
    docs = [t for ts in words.values() for t in ts]
    (ret / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n"
                                              for i, t in enumerate(docs)), encoding="utf-8")
    (ret / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t.split()[0]}) + "\n"
                                               for i, t in enumerate(docs)), encoding="utf-8")
    (ret / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(len(docs))), encoding="utf-8")
    return root


@pytest.mark.slow
def test_gpu_sweep_smoke_on_cpu(tmp_path, small_catalog):  # noqa: F811
    """benchmarks/gpu_e5_sweep.py --smoke: the untouched rows, two trained variants, results written as JSON."""
    import json

    bundles = tmp_path / "carry"
    subprocess.run([sys.executable, str(SCRIPT), "prepare", "--out", str(bundles / "bundle-demo"), "--catalog",
                    str(small_catalog)], check=True, capture_output=True, text=True)
    tasks = _tiny_tasks(tmp_path / "tasks")
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(SWEEP), "--bundles", str(bundles), "--eval-tasks", str(tasks),
                           "--catalog-tasks", f"demo={tasks / 'en_tiny_search'}", "--smoke", "--steps", "2",
                           "--batch-size", "8", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    assert list(rows) == ["e5-small untouched", "e5-small untouched, no prompts", "e5 CAM", "e5 CAM, no prompts"]
    for name, row in rows.items():
        assert set(row["eval"]) == {"dev", "catalog demo"}, name
        dev = row["eval"]["dev"]
        assert set(dev["tasks"]) == {"en_tiny_category", "en_tiny_search"}
        assert 0 <= dev["macro"] <= 100 and dev["retrieval"] is not None and dev["classification"] is not None
    assert rows["e5 CAM"]["step_ms"] > 0 and rows["e5 CAM, no prompts"]["config"] == {"prompts": False}
