"""Shared fixtures: every test builds its own catalog in tmp_path; nothing reads ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "catalog" / "samples"


def two_language_catalog(path: Path) -> Path:
    """A new catalog at `path` holding two languages of the bundled samples (th and vi, 163 products each)."""
    from compass.catalog.db import Catalog, init_catalog
    from compass.catalog.ingest import ingest_files

    init_catalog(path)
    with Catalog(path) as cat:
        ingest_files(cat, [(SAMPLES / "th.jsonl", "th", "TH"), (SAMPLES / "vi.jsonl", "vi", "VN")])
    return path


def copy_catalog(base: Path, to: Path) -> Path:
    """`base` copied to `to`/c.duckdb (a test's own copy of a module's catalog)."""
    import shutil

    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, to / "c.duckdb")
    return to / "c.duckdb"


def run_cli(*args: str, catalog: Path | None = None, check: bool = True, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `compass` CLI in a subprocess (as a user would)."""
    cmd = [sys.executable, "-m", "compass", *args]
    if catalog is not None:
        cmd += ["--catalog", str(catalog)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, input=input,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"compass {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


PRODUCTS_TH = [
    {"id": "th-1", "title": "[ส่งฟรี] Samsung Galaxy A55 5G 8/256GB สีดำ ของแท้ 100%",
     "category": "มือถือและอุปกรณ์ > สมาร์ทโฟน",
     "attributes": {"brand": "Samsung", "model": "Galaxy A55", "color": "ดำ"},
     "description": "สมาร์ทโฟนจอใหญ่ 6.6 นิ้ว แบตอึด 5000mAh กล้องชัด", "price": 12990, "currency": "THB"},
    {"id": "th-2", "title": "รองเท้าผ้าใบ Nike Air Force 1 สีขาว ไซส์ 42 พร้อมส่ง",
     "category": "แฟชั่นผู้ชาย > รองเท้า > รองเท้าผ้าใบ",
     "attributes": {"brand": "Nike", "model": "Air Force 1", "size": "42"},
     "description": "รองเท้าผ้าใบหนังแท้ ใส่สบาย เข้ากับทุกชุด", "price": 3200, "currency": "THB"},
    {"id": "th-3", "title": "ครีมกันแดด Biore UV Aqua Rich SPF50+ 50g ลดราคา", "category": "ความงาม > ดูแลผิวหน้า > กันแดด",
     "attributes": {"brand": "Biore", "size": "50g"}, "description": "กันแดดเนื้อบางเบา ซึมไว ไม่เหนอะหนะ",
     "price": 259, "currency": "THB"},
]


@pytest.fixture
def products_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "th.jsonl", PRODUCTS_TH)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "c.duckdb"
    run_cli("init", catalog=path)
    return path


# One tiny random Llama and one real vLLM CPU server for every vLLM test module (tests/test_datagen_vllm.py,
# tests/test_ray_llm.py): starting the server costs about 45 s. Only modules marked `vllm` request them.
@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory) -> Path:
    from support.vllm_server import VENV, build_tiny_model

    return build_tiny_model(VENV, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def vllm_server(vllm_model, tmp_path_factory):
    from support.vllm_server import VENV, VLLMServer

    with VLLMServer(VENV, vllm_model, tmp_path_factory.mktemp("server") / "vllm.log") as srv:
        yield srv
