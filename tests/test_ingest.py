"""Product ingest: validation with line numbers, idempotence, atomicity, bulk path."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import PRODUCTS_TH, run_cli, write_jsonl

from compass.catalog import Catalog
from compass.catalog.ingest import IngestError, ingest_file
from compass.errors import CompassError


def count(path) -> int:
    with Catalog(path, read_only=True) as cat:
        return cat.scalar("SELECT count(*) FROM products")


def test_ingest_twice_adds_nothing_the_second_time(catalog, products_file):
    first = run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    assert "3 new products" in first.stderr
    second = run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    assert "0 new products (3 already in the catalog)" in second.stderr
    assert count(catalog) == 3
    with Catalog(catalog, read_only=True) as cat:
        row = cat.query("SELECT * FROM products WHERE source_id = 'th-1'")[0]
    assert row["lang"] == "th" and row["market"] == "TH" and row["price"] == 12990.0
    assert json.loads(row["attributes"])["brand"] == "Samsung"
    assert row["category"] == "มือถือและอุปกรณ์ > สมาร์ทโฟน"


def test_broken_line_3_fails_naming_line_3_and_writes_nothing(catalog, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [PRODUCTS_TH[0], PRODUCTS_TH[1], '{"title": "x", "category": ', PRODUCTS_TH[2]])
    proc = run_cli("ingest", str(f), "--lang", "th", "--market", "TH", catalog=catalog, check=False)
    assert proc.returncode == 1
    assert f"{f}:3: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert count(catalog) == 0


@pytest.mark.parametrize("row, expect", [
    ({"category": "a > b"}, "field 'title': missing"),
    ({"title": "t"}, "field 'category': missing"),
    ({"title": 5, "category": "c"}, "field 'title': expected a string"),
    ({"title": "t", "category": "c", "price": "abc"}, "field 'price': 'abc' is not a number"),
    ({"title": "t", "category": "c", "attributes": [1]}, "field 'attributes': expected an object"),
    ([1, 2], "expected a JSON object"),
])
def test_each_problem_gets_one_line_naming_file_line_field(tmp_path, catalog, row, expect):
    f = write_jsonl(tmp_path / "p.jsonl", [PRODUCTS_TH[0], row])
    with Catalog(catalog) as cat:
        with pytest.raises(IngestError) as e:
            ingest_file(cat, f, "th", "TH")
    assert str(e.value).splitlines() == [str(e.value)] and str(e.value).startswith(f"{f}:2: {expect}")


def test_skip_mode_writes_good_rows_and_reports_bad(catalog, tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [PRODUCTS_TH[0], {"title": "no category"}, PRODUCTS_TH[1], "not json"])
    proc = run_cli("ingest", str(f), "--lang", "th", "--market", "TH", "--on-error", "skip", catalog=catalog)
    assert "2 new products" in proc.stderr and "2 bad rows skipped" in proc.stderr
    assert f"{f}:2:" in proc.stderr and f"{f}:4:" in proc.stderr
    assert count(catalog) == 2


def test_not_utf8_names_the_line(catalog, tmp_path):
    f = tmp_path / "latin.jsonl"
    f.write_bytes(b'{"title": "ok", "category": "c"}\n{"title": "caf\xe9", "category": "c"}\n')
    with Catalog(catalog) as cat, pytest.raises(CompassError, match=r"latin.jsonl:2: not UTF-8"):
        ingest_file(cat, f, "en", "SG")


def test_csv_and_parquet_give_the_same_products(tmp_path):
    rows = PRODUCTS_TH
    csv_path = tmp_path / "p.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "title", "category", "attributes", "description", "price", "currency"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "attributes": json.dumps(r["attributes"], ensure_ascii=False)})
    pq_path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "attributes": None} for r in rows]), pq_path)
    from compass.catalog import init_catalog

    results = {}
    for name, f in (("jsonl", write_jsonl(tmp_path / "p.jsonl", rows)), ("csv", csv_path), ("parquet", pq_path)):
        path, _ = init_catalog(tmp_path / f"{name}.duckdb")
        with Catalog(path) as cat:
            ingest_file(cat, f, "th", "TH")
            results[name] = cat.query("SELECT id, title, category, price, currency FROM products ORDER BY id")
    assert results["jsonl"] == results["csv"] == results["parquet"]
    assert len(results["jsonl"]) == 3


def test_bad_language_and_market_are_clear(catalog, products_file):
    proc = run_cli("ingest", str(products_file), "--lang", "xx", "--market", "TH", catalog=catalog, check=False)
    assert proc.returncode == 1 and "unknown language 'xx'" in proc.stderr
    proc = run_cli("ingest", str(products_file), "--lang", "th", "--market", "Thailand", catalog=catalog, check=False)
    assert proc.returncode == 1 and "ISO 3166" in proc.stderr


@pytest.mark.slow
def test_killed_ingest_leaves_catalog_unchanged(catalog, tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as fh:
        for i in range(300_000):
            fh.write(json.dumps({"id": str(i), "title": f"สินค้า {i} ส่งฟรี", "category": "บ้าน > ครัว",
                                 "price": i}, ensure_ascii=False) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "compass", "ingest", str(big), "--lang", "th", "--market", "TH",
                             "--catalog", str(catalog)], stderr=subprocess.PIPE)
    time.sleep(1.5)
    assert proc.poll() is None, "ingest finished before it could be killed; make the file bigger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert count(catalog) == 0
    with Catalog(catalog, read_only=True) as cat:
        assert cat.scalar("SELECT status FROM runs WHERE command = 'ingest'") == "running"
    run_cli("ingest", str(big), "--lang", "th", "--market", "TH", catalog=catalog)
    assert count(catalog) == 300_000


TRICKY = [
    {"id": 7, "title": "  Áo thun\u00a0nam   cotton\tcổ tròn ", "category": "Thời trang nam>Áo  >  Áo thun",
     "attributes": {"màu": "đen \"xám\"", "sizes": ["M", "L"]}, "price": "1,299,000", "currency": " vnd "},
    {"id": "x-1", "title": "ครีม\u3000กันแดด", "category": "ความงาม > กันแดด", "attributes": {}, "price": 0,
     "description": None, "currency": ""},
    {"title": "no id here", "category": "A > B", "price": 12.5},
    {"id": "x-1", "title": "duplicate id, first one wins", "category": "A"},
    {"id": -3, "title": "negative int id", "category": "A", "price": "  "},
]


def test_bulk_sql_path_and_row_path_store_identical_rows(tmp_path):
    from compass.catalog import init_catalog

    f = write_jsonl(tmp_path / "tricky.jsonl", TRICKY)
    out = {}
    for bulk in (True, False):
        path, _ = init_catalog(tmp_path / f"{bulk}.duckdb")
        with Catalog(path) as cat:
            res = ingest_file(cat, f, "vi", "VN", bulk=bulk)
            out[bulk] = (res.rows_read, res.rows_valid, res.rows_new,
                         cat.query("SELECT * EXCLUDE (ingest_run) FROM products ORDER BY id"))
    assert out[True] == out[False]
    rows = {r["source_id"]: r for r in out[True][3]}
    assert rows["7"]["title"] == "Áo thun nam cotton cổ tròn"
    assert rows["7"]["category"] == "Thời trang nam > Áo > Áo thun"
    assert rows["7"]["price"] == 1299000.0 and rows["7"]["currency"] == "VND"
    assert rows["x-1"]["title"] == "ครีม กันแดด" and rows["x-1"]["attributes"] is None
    assert rows[None]["title"] == "no id here" and rows["-3"]["price"] is None
    assert out[True][2] == 4
