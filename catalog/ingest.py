"""Ingest a product catalog file (jsonl, csv, parquet) into the products table.

Validation is per row with the file's line number, so a user gets one line per problem; the insert is one bulk
Arrow -> DuckDB statement inside one transaction, so a bad file (default --on-error fail) or a killed ingest
writes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.ids import content_id
from compass.langs import normalize_lang

FIELDS = ["id", "title", "category", "attributes", "description", "price", "currency"]
REQUIRED = ("title", "category")
FORMATS = ("jsonl", "csv", "parquet")
MAX_REPORTED = 50


class IngestError(CompassError):
    """Raised with every problem found; str() is one line per problem."""

    def __init__(self, problems: list[str], total: int):
        self.problems = problems
        more = f"\n... and {total - len(problems)} more problems" if total > len(problems) else ""
        super().__init__("\n".join(problems) + more)


@dataclass
class IngestResult:
    path: str
    rows_read: int
    rows_valid: int
    rows_new: int
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise CompassError(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    guess = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "parquet": "parquet"}.get(suffix)
    if not guess:
        raise CompassError(f"{path}: cannot tell the format from the suffix {path.suffix!r}: pass "
                           "--format jsonl|csv|parquet")
    return guess


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CompassError(f"{path}:{line}: not UTF-8 (byte {data[e.start]:#04x} at offset {e.start}): re-save the "
                           "file as UTF-8 (e.g. `iconv -f WINDOWS-874 -t UTF-8`)") from None


def _records(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed record or an error string) for each data row of the file."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise CompassError(f"{path}: not a readable parquet file ({e}): check the file or pass --format") from None
        for i, rec in enumerate(table.to_pylist(), start=1):
            yield i, rec
        return
    text = _decode(path)
    if fmt == "jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, f"invalid JSON ({e.msg} at column {e.colno}): fix the line so it is one JSON object"
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "title" not in reader.fieldnames:
        raise CompassError(f"{path}:1: CSV header lacks a 'title' column (has {reader.fieldnames}): "
                           f"the header must name {', '.join(FIELDS)}")
    for rec in reader:
        lineno = reader.line_num
        if None in rec:
            yield lineno, "more values than header columns: quote fields that contain commas"
            continue
        rec = {k: (v if v != "" else None) for k, v in rec.items()}
        if rec.get("attributes"):
            try:
                rec["attributes"] = json.loads(rec["attributes"])
            except json.JSONDecodeError:
                yield lineno, "field 'attributes': not a JSON object: write it as {\"key\": \"value\"}"
                continue
        yield lineno, rec


def _validate(rec: object) -> tuple[dict | None, str | None]:
    """Normalise one record, or say what is wrong with it and how to fix it."""
    if not isinstance(rec, dict):
        return None, f"expected a JSON object, got {type(rec).__name__}: write one object per line"
    out: dict = {}
    for name in REQUIRED:
        v = rec.get(name)
        if v is None or (isinstance(v, str) and not v.strip()):
            return None, f"field '{name}': missing or empty (required): add a non-empty \"{name}\""
        if not isinstance(v, str):
            return None, f"field '{name}': expected a string, got {type(v).__name__}: quote the value"
    out["title"] = " ".join(rec["title"].split())
    out["category"] = " > ".join(p.strip() for p in rec["category"].split(">") if p.strip())
    sid = rec.get("id")
    if sid is not None and not isinstance(sid, (str, int)) or isinstance(sid, bool):
        return None, f"field 'id': expected a string or integer, got {type(sid).__name__}"
    out["source_id"] = None if sid is None or str(sid).strip() == "" else str(sid).strip()
    attrs = rec.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        return None, f"field 'attributes': expected an object, got {type(attrs).__name__}: write {{\"key\": \"value\"}}"
    out["attributes"] = json.dumps(attrs, ensure_ascii=False, sort_keys=True) if attrs else None
    desc = rec.get("description")
    if desc is not None and not isinstance(desc, str):
        return None, f"field 'description': expected a string, got {type(desc).__name__}"
    out["description"] = desc
    price = rec.get("price")
    if isinstance(price, bool) or (price is not None and not isinstance(price, (int, float, str))):
        return None, f"field 'price': expected a number, got {type(price).__name__}"
    if isinstance(price, str):
        try:
            price = float(price.replace(",", "")) if price.strip() else None
        except ValueError:
            return None, f"field 'price': {price!r} is not a number: write digits only, e.g. 199.00"
    if price is not None and (not math.isfinite(price) or price < 0):
        return None, f"field 'price': {price!r} must be a finite number >= 0"
    out["price"] = None if price is None else float(price)
    cur = rec.get("currency")
    if cur is not None and not isinstance(cur, str):
        return None, f"field 'currency': expected a string such as \"THB\", got {type(cur).__name__}"
    out["currency"] = cur.strip().upper() if cur else None
    return out, None


def ingest_file(cat: Catalog, path: str | Path, lang: str, market: str, fmt: str | None = None,
                on_error: str = "fail", run_id: str | None = None) -> IngestResult:
    """Validate every row of `path`, then insert the new products in one transaction."""
    path = Path(path)
    if on_error not in ("fail", "skip"):
        raise CompassError(f"unknown --on-error {on_error!r}: use fail or skip")
    if not path.is_file():
        raise CompassError(f"{path}: no such file: check the path")
    lang = normalize_lang(lang)
    market = (market or "").strip().upper()
    if not (len(market) == 2 and market.isalpha()):
        raise CompassError(f"--market {market!r}: use an ISO 3166 alpha-2 code such as TH, VN, ID, MY, PH")
    fmt = detect_format(path, fmt)

    cols: dict[str, list] = {k: [] for k in ("id", "lang", "market", "source_id", "title", "category", "attributes",
                                            "description", "price", "currency", "source_file", "ingest_run")}
    seen: set[str] = set()
    problems: list[str] = []
    n_problems = rows = 0
    for lineno, rec in _records(path, fmt):
        rows += 1
        norm, err = (None, rec) if isinstance(rec, str) else _validate(rec)
        if err:
            n_problems += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{path}:{lineno}: {err}")
            continue
        pid = content_id("product", lang, market, norm["source_id"] or norm["title"])
        if pid in seen:
            continue
        seen.add(pid)
        cols["id"].append(pid)
        cols["lang"].append(lang)
        cols["market"].append(market)
        for k in ("source_id", "title", "category", "attributes", "description", "price", "currency"):
            cols[k].append(norm[k])
        cols["source_file"].append(path.name)
        cols["ingest_run"].append(run_id)
    if n_problems and on_error == "fail":
        raise IngestError(problems, n_problems)
    table = pa.table({k: pa.array(v, type=pa.float64() if k == "price" else pa.string()) for k, v in cols.items()})
    with cat.transaction() as con:
        before = con.execute("SELECT count(*) FROM products").fetchone()[0]
        con.register("incoming_products", table)
        con.execute("INSERT INTO products SELECT * FROM incoming_products "
                    "WHERE id NOT IN (SELECT id FROM products)")
        con.unregister("incoming_products")
        new = con.execute("SELECT count(*) FROM products").fetchone()[0] - before
    return IngestResult(str(path), rows, len(seen), new, problems, n_problems)
