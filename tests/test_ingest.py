"""Product ingest: validation with line numbers, idempotence, atomicity, bulk path."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    f = write_jsonl(tmp_path / "bad.jsonl",
                    [PRODUCTS_TH[0], PRODUCTS_TH[1], '{"title": "x", "category": ', PRODUCTS_TH[2]])
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
    # Kill once the run record is committed (it reaches the WAL first), not after a fixed sleep: on a loaded
    # machine Python's start alone can outlast one.
    wal, deadline = Path(str(catalog) + ".wal"), time.monotonic() + 120
    while not (wal.exists() and wal.stat().st_size > 0) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
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


def test_multi_file_ingest_with_a_bad_file_writes_nothing(catalog, tmp_path):
    """Issue 14.8: `ingest good.jsonl bad.jsonl` committed good.jsonl's rows, then exited 1."""
    good = write_jsonl(tmp_path / "good.jsonl", PRODUCTS_TH[:2])
    bad = write_jsonl(tmp_path / "bad.jsonl", [PRODUCTS_TH[2], {"title": "no category"}])
    proc = run_cli("ingest", str(good), str(bad), "--lang", "th", "--market", "TH", catalog=catalog, check=False)
    assert proc.returncode == 1 and f"{bad}:2: field 'category'" in proc.stderr
    assert count(catalog) == 0
    proc = run_cli("ingest", str(good), str(tmp_path / "missing.jsonl"), "--lang", "th", "--market", "TH",
                   catalog=catalog, check=False)
    assert proc.returncode == 1 and "no such file" in proc.stderr and count(catalog) == 0
    # with skip, the good rows of every file go in together; a product in two files is new once
    proc = run_cli("ingest", str(good), str(bad), str(good), "--lang", "th", "--market", "TH", "--on-error", "skip",
                   catalog=catalog)
    assert count(catalog) == 3
    assert "good.jsonl: 2 new products" in proc.stderr and "bad.jsonl: 1 new products" in proc.stderr
    assert "good.jsonl: 0 new products (2 already" in proc.stderr


def deep(n: int) -> dict:
    d: dict = {"v": 1}
    for _ in range(n - 1):
        d = {"k": d}
    return d


LIMIT_CASES = [  # (row, message), each refused by both paths with the line and the limit
    ({"title": "x" * (17 * 2**20), "category": "c"}, "field 'title': 17,825,792 characters, over the limit of 1,000"),
    ("DEEP1500", "nested"),
    ({"title": "t", "category": "c", "attributes": deep(9)}, "nested deeper than the limit of 8 levels"),
    ({"title": "t", "category": "c", "description": "d" * 20_001}, "field 'description': 20,001 characters"),
    ({"title": "t", "category": "c", "attributes": {"a": "v" * 20_000}}, "field 'attributes': 20,008 characters"),
    ({"title": "t", "category": "c" * 1001}, "field 'category': 1,001 characters"),
    ({"id": "i" * 257, "title": "t", "category": "c"}, "field 'id': 257 characters"),
    ({"title": "a\u0000b", "category": "c"}, "field 'title': contains a NUL character"),
    ({"title": "t", "category": "c", "description": "\u0000"}, "field 'description': contains a NUL"),
    ({"title": "t", "category": "c", "attributes": {"k": "v\u0000"}}, "field 'attributes': contains a NUL"),
]


@pytest.mark.parametrize("row, expect", LIMIT_CASES, ids=[str(i) for i in range(len(LIMIT_CASES))])
def test_limits_are_enforced_with_line_and_limit(tmp_path, row, expect):
    """Issue 14.5: a 17 MB title and 1,500-deep attributes were accepted and broke every later run."""
    from compass.catalog import init_catalog

    if row == "DEEP1500":  # json.dumps itself would recurse too deeply: write it by hand
        line = '{"title": "t", "category": "c", "attributes": ' + '{"k": ' * 1499 + '{"v": 1}' + "}" * 1500 + "}"
    else:
        line = json.dumps(row, ensure_ascii=False)
    f = write_jsonl(tmp_path / "p.jsonl", [PRODUCTS_TH[0], line])
    for bulk in (True, False):
        path, _ = init_catalog(tmp_path / f"{bulk}.duckdb")
        with Catalog(path) as cat:
            with pytest.raises(IngestError) as e:
                ingest_file(cat, f, "th", "TH", bulk=bulk)
            assert str(e.value).startswith(f"{f}:2: ") and expect in str(e.value), str(e.value)[:300]
            assert "\n" not in str(e.value)
            assert cat.scalar("SELECT count(*) FROM products") == 0
            res = ingest_file(cat, f, "th", "TH", on_error="skip", bulk=bulk)
            assert res.rows_new == 1 and res.problem_count == 1


def test_structured_route_survives_everything_at_the_limits(catalog, tmp_path):
    """Whatever ingest accepts, `generate --route structured` must process without crashing."""
    at_limit = deep(8)
    rows = [
        {"id": "a", "title": "T" * 1000, "category": " > ".join(["c" * 10] * 70), "attributes": at_limit,
         "description": "d" * 20_000},
        {"id": "b", "title": "Brand Model x", "category": "A > B",
         "attributes": {"brand": ["x", {"y": [1, None, True]}], "model": {"n": 1}, "size": 3.5, "color": None,
                        "": "empty key", "v" * 100: "w" * 19_000}},
        {"id": "c", "title": "ๆ", "category": ">", "attributes": {}},  # refused: empty category after cleaning
        {"id": "d", "title": "\u200b \u00a0", "category": "x"},
        {"id": "e", "title": "emoji 🛒🛒🛒 \u202e rtl", "category": "🛒 > \u0301", "attributes": {"brand": 5},
         "price": 1e308},
    ]
    f = write_jsonl(tmp_path / "edge.jsonl", rows)
    run_cli("ingest", str(f), "--lang", "th", "--market", "TH", "--on-error", "skip", catalog=catalog)
    with Catalog(catalog, read_only=True) as cat:
        assert {"a", "b", "e"} <= {r["source_id"] for r in cat.query("SELECT source_id FROM products")}
    proc = run_cli("generate", "--route", "structured", catalog=catalog, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_small_ingest_failures_are_clear(catalog, tmp_path):
    """A directory, a non-UTF-8 line under --on-error skip, and JSON errors that read 'at at'."""
    proc = run_cli("ingest", str(tmp_path), "--lang", "th", "--market", "TH", catalog=catalog, check=False)
    assert proc.returncode == 1 and "is a directory: pass the catalog files inside it" in proc.stderr
    f = tmp_path / "mixed.jsonl"
    f.write_bytes(json.dumps(PRODUCTS_TH[0]).encode() + b'\n{"title": "caf\xe9", "category": "c"}\n'
                  + json.dumps(PRODUCTS_TH[1]).encode() + b"\n")
    proc = run_cli("ingest", str(f), "--lang", "th", "--market", "TH", "--on-error", "skip", catalog=catalog)
    assert "2 new products" in proc.stderr and f"{f}:2: not UTF-8 (byte 0xe9" in proc.stderr
    assert count(catalog) == 2
    g = write_jsonl(tmp_path / "s.jsonl", ['{"title": "unterminated, "category": "c"}', '{"title": "x'])
    with Catalog(catalog) as cat, pytest.raises(IngestError) as e:
        ingest_file(cat, g, "th", "TH")
    assert "at at" not in str(e.value) and "Unterminated string starting at column" in str(e.value)


def test_iter_jsonl_names_the_line_for_bad_bytes_and_bad_json(tmp_path):
    from compass.jsonl import iter_jsonl

    f = tmp_path / "e.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(CompassError, match=r"e.jsonl:2: not UTF-8 \(byte 0xe9"):
        list(iter_jsonl(f))
    f.write_text('{"a": 1}\n{"a": "x\n', encoding="utf-8")
    with pytest.raises(CompassError) as e:
        list(iter_jsonl(f))
    assert "e.jsonl:2: not JSON (Unterminated string starting at column 7)" in str(e.value)
    with pytest.raises(CompassError, match="is a directory"):
        list(iter_jsonl(tmp_path))


def test_duplicate_ids_in_one_input_name_both_lines(tmp_path):
    """Issue 14.2 (part): a second row with the same id, or an id-less row with the same title, vanished."""
    from compass.catalog import init_catalog

    rows = [{"id": "a", "title": "first", "category": "c"}, {"id": "b", "title": "other", "category": "c"},
            {"id": "a", "title": "second, edited", "category": "c"}, {"title": "no id", "category": "c"},
            {"title": "no id", "category": "c", "price": 5}]
    f = write_jsonl(tmp_path / "d.jsonl", rows)
    for bulk in (True, False):
        path, _ = init_catalog(tmp_path / f"{bulk}.duckdb")
        with Catalog(path) as cat:
            with pytest.raises(IngestError) as e:
                ingest_file(cat, f, "th", "TH", bulk=bulk)
            assert str(e.value).splitlines() == [
                f"{f}:3: duplicate of line 1 (same id 'a'): give each product its own id or remove one row "
                "(--on-error skip keeps the first)",
                f"{f}:5: duplicate of line 4 (no id and the same title): give each product its own id or remove "
                "one row (--on-error skip keeps the first)"]
            assert cat.scalar("SELECT count(*) FROM products") == 0
            res = ingest_file(cat, f, "th", "TH", on_error="skip", bulk=bulk)
            assert res.rows_new == 3 and res.problem_count == 2
            assert cat.scalar("SELECT title FROM products WHERE source_id = 'a'") == "first"
            assert cat.scalar("SELECT price FROM products WHERE title = 'no id'") is None


def _ingest_th(catalog, f):
    return run_cli("ingest", str(f), "--lang", "th", "--market", "TH", catalog=catalog)


def _ingest_and_generate(catalog, tmp_path, rows):
    """Products into a fresh file, ingested, structured pairs generated; returns the file (for edits)."""
    f = write_jsonl(tmp_path / "p.jsonl", rows)
    _ingest_th(catalog, f)
    run_cli("generate", "--route", "structured", catalog=catalog)
    return f


def test_changed_product_is_a_new_version_and_old_examples_are_stale(catalog, tmp_path):
    """Issue 14.2: an edited file reported '0 new products (1 already in the catalog)' and the stale row stayed."""
    v1 = [dict(p) for p in PRODUCTS_TH]
    f = _ingest_and_generate(catalog, tmp_path, v1)
    with Catalog(catalog, read_only=True) as cat:
        pid, old_hash = cat.query("SELECT id, content_hash FROM products WHERE source_id = 'th-2'")[0].values()
        old_examples = {r["id"] for r in cat.query("SELECT id FROM examples WHERE product_id = ?", [pid])}
        kept_before = cat.scalar("SELECT count(*) FROM kept_examples")
    assert old_hash and old_examples

    v2 = [dict(p) for p in PRODUCTS_TH]
    v2[1]["title"] = "รองเท้าผ้าใบ Adidas Samba สีขาว ไซส์ 42"
    write_jsonl(f, v2)
    proc = _ingest_th(catalog, f)
    assert "0 new products, 1 changed" in proc.stderr and "(2 already in the catalog)" in proc.stderr
    rerun = _ingest_th(catalog, f)
    assert "0 new products (3 already in the catalog)" in rerun.stderr  # a rerun changes nothing
    with Catalog(catalog, read_only=True) as cat:
        row = cat.query("SELECT id, title, content_hash FROM products WHERE source_id = 'th-2'")[0]
        assert row["id"] == pid and row["title"] == v2[1]["title"] and row["content_hash"] != old_hash
        assert cat.scalar("SELECT count(*) FROM products") == 3
        old = cat.query("SELECT * FROM product_versions")
        assert len(old) == 1 and old[0]["title"] == v1[1]["title"] and old[0]["content_hash"] == old_hash
        assert old[0]["superseded_by"] == row["content_hash"]
        stale = cat.query("SELECT example_id, keep, reason FROM decisions WHERE stage = 'product'")
        assert {r["example_id"] for r in stale} == old_examples
        assert all(not r["keep"] and r["reason"] == "product:superseded" for r in stale)
        assert not cat.scalar("SELECT count(*) FROM kept_examples WHERE product_id = ?", [pid])
    run_cli("generate", "--route", "structured", catalog=catalog)
    with Catalog(catalog, read_only=True) as cat:
        fresh = cat.query("SELECT positive FROM kept_examples WHERE product_id = ?", [pid])
        assert fresh and any(v2[1]["title"] in r["positive"] for r in fresh)
        assert cat.scalar("SELECT count(*) FROM kept_examples") >= kept_before - len(old_examples)
    for rows in (v1, v2):   # edited back, and away again: the same superseded decisions, recorded once each
        write_jsonl(f, rows)
        _ingest_th(catalog, f)
        run_cli("generate", "--route", "structured", catalog=catalog)
    with Catalog(catalog, read_only=True) as cat:
        keys = cat.query("SELECT example_id, params_hash, count(*) AS n FROM decisions WHERE stage = 'product' "
                         "GROUP BY ALL")
        assert {r["params_hash"] for r in keys} == {old_hash, row["content_hash"]}
        assert all(r["n"] == 1 for r in keys)


def test_migration_backfill_hash_matches_ingest(catalog, products_file):
    from importlib import resources

    run_cli("ingest", str(products_file), "--lang", "th", "--market", "TH", catalog=catalog)
    sql = (resources.files("compass.catalog") / "migrations" / "0050_product_versions.sql").read_text()
    update = next(s for s in sql.split(";") if "UPDATE products" in s)
    with Catalog(catalog) as cat:
        before = cat.query("SELECT id, content_hash FROM products ORDER BY id")
        with cat.transaction() as con:
            con.execute("UPDATE products SET content_hash = NULL")
            con.execute(update[update.index("UPDATE"):])
        assert cat.query("SELECT id, content_hash FROM products ORDER BY id") == before
        assert all(r["content_hash"] for r in before)


def test_price_only_change_keeps_examples_the_new_version_reproduces(catalog, tmp_path):
    rows = [dict(p) for p in PRODUCTS_TH]
    f = _ingest_and_generate(catalog, tmp_path, rows)
    with Catalog(catalog, read_only=True) as cat:
        kept = {r["id"] for r in cat.query("SELECT id FROM kept_examples")}
    rows[0]["price"] = rows[0]["price"] + 1  # structured pairs do not use the price
    write_jsonl(f, rows)
    assert "1 changed" in _ingest_th(catalog, f).stderr
    with Catalog(catalog, read_only=True) as cat:
        assert {r["id"] for r in cat.query("SELECT id FROM kept_examples")} < kept  # stale until regenerated
    run_cli("generate", "--route", "structured", catalog=catalog)
    with Catalog(catalog, read_only=True) as cat:
        assert {r["id"] for r in cat.query("SELECT id FROM kept_examples")} == kept
        assert cat.scalar("SELECT count(*) FROM decisions WHERE reason = 'product:current'") > 0
