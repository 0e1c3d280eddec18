"""The bulk SQL ingest path judges a value's JSON type from its first character (json_type only for numbers,
booleans, arrays): every type of every field must give what the row-by-row path gives, the same stored row or
the same message, and the bulk path must take every clean row it can (or the speed is gone unnoticed)."""

from __future__ import annotations

import pytest

from compass.catalog import Catalog, init_catalog
from compass.catalog.ingest import IngestError, _bulk_jsonl, ingest_file

# (field, JSON text of its value); the other fields stay clean: {"id": "case-N", "title": "tN", "category": "c"}
CASES = [(field, v) for field, values in {
    "id": ['"x"', "7", "-3", "0", "1.5", "1e3", "true", "null", '""', '"  "', '{"a": 1}', "[1]",
           "123456789012345678901234567890", '"a\\u00e9\\"b"'],
    "title": ['"t"', "5", "1.5", "true", "false", "null", '""', '"  "', '{"a": 1}', '["t"]', '"a\\u00e9 \\"q\\""',
              '"x\\ty"', '"\\u00a0x"', '"caf\\u00e9\\/x"'],
    "category": ['"a>b"', '" a > > b "', "5", "true", "null", '""', '">"', '{"a": 1}', '["c"]', '"A\\u3000> B"'],
    "attributes": ["{}", '{"a": 1}', '{"a": [1, {"b": null}], "c": "\\"q\\""}', "[1]", '"s"', "5", "true",
                   "null", "[]"],
    "description": ['"d"', '""', '"a\\nb"', "5", "true", "null", '{"a": 1}', '["d"]'],
    "price": ["5", "5.5", "0", "-1", "1e3", "1e999", '"1,299.50"', '"  "', '""', '"abc"', "true", "null",
              '{"a": 1}', "[1]", "18446744073709551616"],
    "currency": ['"THB"', '" vnd "', '""', "5", "true", "null", '{"a": 1}', '"ABCDEFGHIJKLMNOPQ"', '"U$D"'],
}.items() for v in values]

# Valid values that the bulk path leaves to the row path on purpose: a number that is neither an integer
# DuckDB reads exactly (yyjson reads it as a double, and its text would differ from Python's str(int)).
ROW_PATH_ONLY = {("id", "123456789012345678901234567890")}


def _line(i: int, field: str, value: str) -> str:
    row = {"id": f'"case-{i}"', "title": f'"t{i}"', "category": '"c"', field: value}
    return "{" + ", ".join(f'"{k}": {v}' for k, v in row.items()) + "}\n"


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    d = tmp_path_factory.mktemp("bulk_types")
    cats = {bulk: Catalog(init_catalog(d / f"{bulk}.duckdb")[0]) for bulk in (True, False)}
    yield d, cats
    for cat in cats.values():
        cat.close()


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{f}={v}" for f, v in CASES])
def test_bulk_path_and_row_path_agree_on_every_json_type(catalogs, i):
    d, cats = catalogs
    field, value = CASES[i]
    f = d / f"case{i}.jsonl"
    f.write_text(_line(i, field, value), encoding="utf-8")
    out = {}
    for bulk, cat in cats.items():
        try:
            ingest_file(cat, f, "th", "TH", bulk=bulk)
            out[bulk] = cat.query("SELECT * EXCLUDE (ingest_run) FROM products WHERE source_id = ? OR "
                                  "source_file = ?", [f"case-{i}", f.name])
        except IngestError as e:
            out[bulk] = str(e)
    assert out[True] == out[False]
    took = _bulk_jsonl(cats[True], f, "th", "TH", None, "_types_probe") is not None
    cats[True].con.execute("DROP TABLE IF EXISTS _types_probe")
    valid = not isinstance(out[False], str)
    assert took == (valid and (field, value) not in ROW_PATH_ONLY), (field, value, out[False])
