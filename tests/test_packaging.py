"""The package-dir mapping (compass.datagen -> datagen/ ...) holds in a built wheel, not only in the editable
install, and the wheel carries its data (migrations, samples, templates)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_maps_subpackages_and_ships_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path / "whl"), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("compass_embed-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for sub in ("datagen", "prompts", "filters", "train", "catalog"):
        assert f"compass/{sub}/__init__.py" in names
    assert any(n.startswith("compass/catalog/migrations/0001_core.sql") for n in names)
    assert all(f"compass/catalog/samples/{lang}.jsonl" in names
               for lang in ("th", "vi", "id", "ms", "fil", "my", "km", "lo", "en"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import compass.datagen.structured, compass.catalog.db, compass.filters, compass.train, compass.prompts;"
            "from compass.catalog import migrations; from compass.catalog.bundled import sample_files;"
            f"import compass.catalog.db as d; assert str(d.__file__).startswith({str(site)!r}), d.__file__;"
            "assert len(migrations()) >= 4 and all(p.exists() for p, _, _ in sample_files()); print('ok')")
    env = {**os.environ, "PYTHONPATH": str(site)}
    # PYTHONPATH puts the unpacked wheel before the editable install's finder, from a folder outside the repo
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
