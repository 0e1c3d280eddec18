"""compass train --nproc 2: two gloo CPU processes, CAM gathering across them, one loadable model."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from test_train import small_catalog  # noqa: F401 (fixture)


@pytest.mark.slow
def test_train_two_processes(tmp_path, small_catalog):  # noqa: F811
    out = tmp_path / "model"
    run_cli("train", "--out", str(out), "--nproc", "2", "--max-steps", "3", "--batch-size", "16",
            "--vocab-size", "400", "--embedding-dim", "32", catalog=small_catalog)
    info = json.loads((out / "compass_train.json").read_text(encoding="utf-8"))
    assert info["fit"]["global_step"] == 3
    assert info["fit"]["loss_config"]["gather_across_devices"] is True
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["giày"]).shape == (1, 32)
    bad = run_cli("train", "--out", str(tmp_path / "x"), "--nproc", "3", "--batch-size", "16",
                  catalog=small_catalog, check=False)
    assert bad.returncode == 1 and "multiple of --nproc" in bad.stderr
