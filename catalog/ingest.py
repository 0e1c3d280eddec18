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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from compass.catalog.db import Catalog, registered
from compass.errors import CompassError
from compass.ids import content_id
from compass.langs import normalize_lang

FIELDS = ["id", "title", "category", "attributes", "description", "price", "currency"]
REQUIRED = ("title", "category")
FORMATS = ("jsonl", "csv", "parquet")
MAX_REPORTED = 50
# Whitespace runs collapse to one space. Python and DuckDB (RE2) spell the same class, so the bulk SQL path and
# the row-by-row path normalise identically (a test compares them).
_WS_CHARS = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS = re.compile(f"[{_WS_CHARS}]+")
_WS_RE2 = ("[\\t\\n\\x0B\\x0C\\r \\x{00A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
           "\\x{205F}\\x{3000}]+")


# Text that the normalisation would change: an exotic whitespace character, two spaces, or a space at an end;
# for categories also a '>' without one space on each side, or an empty level.
_DIRTY_RE2 = ("[\\t\\n\\x0B\\x0C\\r\\x{00A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
              "\\x{3000}]|  |^ | $")
_DIRTY_CAT_RE2 = _DIRTY_RE2 + "|[^ ]>|>[^ ]|^>|>$|> >"


def _clean(text: str) -> str:
    return _WS.sub(" ", text).strip(" ")


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
    out["title"] = _clean(rec["title"])
    out["category"] = " > ".join(p for p in (_clean(x) for x in rec["category"].split(">")) if p)
    for name in REQUIRED:
        if not out[name]:
            return None, f"field '{name}': empty after removing whitespace and '>' separators: give it text"
    sid = rec.get("id")
    if isinstance(sid, bool) or (sid is not None and not isinstance(sid, (str, int))):
        return None, f"field 'id': expected a string or integer, got {type(sid).__name__}"
    out["source_id"] = None if sid is None or str(sid).strip() == "" else str(sid).strip()
    attrs = rec.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        return None, f"field 'attributes': expected an object, got {type(attrs).__name__}: write {{\"key\": \"value\"}}"
    out["attributes"] = json.dumps(attrs, ensure_ascii=False, separators=(",", ":")) if attrs else None
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
    if cur is not None and not re.fullmatch(r"[A-Za-z ]*", cur):
        return None, f"field 'currency': {cur!r} is not an ISO 4217 code such as THB, VND, IDR"
    out["currency"] = (cur.strip().upper() or None) if cur else None
    return out, None


_FAST_SQL = """
WITH raw AS (
    SELECT row_number() OVER () AS rn, * FROM read_json(?, format = 'newline_delimited', columns = {
        id: 'JSON', title: 'JSON', category: 'JSON', attributes: 'JSON', description: 'JSON', price: 'JSON',
        currency: 'JSON'})
), typed AS (
    SELECT rn,
        json_type(id) AS t_id, json_type(title) AS t_title, json_type(category) AS t_cat,
        json_type(attributes) AS t_attr, json_type(description) AS t_desc, json_type(price) AS t_price,
        json_type(currency) AS t_cur,
        nullif(trim(id ->> '$'), '') AS source_id,
        -- The full normalisation is slow (regex replace, list lambdas); most rows are already clean, so a
        -- cheap match decides whether they need it.
        CASE WHEN regexp_matches(title ->> '$', $dirty) THEN trim(regexp_replace(title ->> '$', $ws, ' ', 'g'))
             ELSE title ->> '$' END AS title,
        CASE WHEN regexp_matches(category ->> '$', $dirty_cat)
             THEN array_to_string(list_filter(list_transform(string_split(category ->> '$', '>'),
                  x -> trim(regexp_replace(x, $ws, ' ', 'g'))), x -> x <> ''), ' > ')
             ELSE category ->> '$' END AS category,
        CASE WHEN attributes IS NULL OR json_type(attributes) = 'NULL' OR attributes::VARCHAR = '{}' THEN NULL
             ELSE attributes::VARCHAR END AS attributes,
        description ->> '$' AS description,
        CASE WHEN json_type(price) IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN TRY_CAST(price ->> '$' AS DOUBLE)
             WHEN json_type(price) = 'VARCHAR' THEN TRY_CAST(nullif(replace(trim(price ->> '$'), ',', ''), '') AS DOUBLE)
        END AS price,
        nullif(upper(trim(currency ->> '$')), '') AS currency,
        currency ->> '$' AS raw_currency, price ->> '$' AS raw_price
    FROM raw
)
SELECT * FROM typed
"""
_FAST_BAD = """
    t_title IS DISTINCT FROM 'VARCHAR' OR t_cat IS DISTINCT FROM 'VARCHAR' OR title = '' OR category = ''
    OR (t_id IS NOT NULL AND t_id NOT IN ('NULL', 'VARCHAR', 'BIGINT', 'UBIGINT'))
    OR (t_attr IS NOT NULL AND t_attr NOT IN ('NULL', 'OBJECT'))
    OR (t_desc IS NOT NULL AND t_desc NOT IN ('NULL', 'VARCHAR'))
    OR (t_cur IS NOT NULL AND t_cur NOT IN ('NULL', 'VARCHAR'))
    OR (t_cur = 'VARCHAR' AND NOT regexp_full_match(raw_currency, '[A-Za-z ]*'))
    OR (t_price IS NOT NULL AND t_price NOT IN ('NULL', 'BIGINT', 'UBIGINT', 'DOUBLE', 'VARCHAR'))
    OR (t_price NOT IN ('NULL') AND price IS NULL AND NOT (t_price = 'VARCHAR' AND trim(raw_price) = ''))
    OR (price IS NOT NULL AND (NOT isfinite(price) OR price < 0))
"""


def _ingest_jsonl_bulk(cat: Catalog, path: Path, lang: str, market: str, run_id: str | None) -> IngestResult | None:
    """All-SQL path for clean JSONL: DuckDB parses, validates and hashes in bulk.

    Returns None when any row needs a message (bad JSON, a type or a required field): the row-by-row path then
    finds each problem with its line number. Both paths store identical rows (tested).
    """
    # The pattern is a constant of ours, inlined as a literal: as a bound parameter DuckDB recompiles it per row.
    typed = (_FAST_SQL.replace("$ws", f"'{_WS_RE2}'").replace("$dirty_cat", f"'{_DIRTY_CAT_RE2}'")
             .replace("$dirty", f"'{_DIRTY_RE2}'"))
    params = [str(path)]
    con = cat.con
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _ingest AS {typed}", params)
    except Exception:  # duckdb raises on malformed JSON: let the precise path report it
        return None
    try:
        if con.execute(f"SELECT count(*) FROM _ingest WHERE {_FAST_BAD}").fetchone()[0]:
            return None
        rows = con.execute("SELECT count(*) FROM _ingest").fetchone()[0]
        with cat.transaction():
            before = con.execute("SELECT count(*) FROM products").fetchone()[0]
            con.execute(
                """INSERT INTO products
                   SELECT id, ?, ?, source_id, title, category, attributes, description, price, currency, ?, ?
                   FROM (SELECT *, substr(sha256(concat_ws(chr(31), 'product', ?, ?, coalesce(source_id, title))),
                                          1, 20) AS id FROM _ingest)
                   QUALIFY row_number() OVER (PARTITION BY id ORDER BY rn) = 1
                       AND id NOT IN (SELECT id FROM products)""",
                [lang, market, path.name, run_id, lang, market])
            new = con.execute("SELECT count(*) FROM products").fetchone()[0] - before
        valid = con.execute(
            "SELECT count(DISTINCT coalesce(source_id, title)) FROM _ingest").fetchone()[0]
        return IngestResult(str(path), rows, valid, new)
    finally:
        con.execute("DROP TABLE IF EXISTS _ingest")


def ingest_file(cat: Catalog, path: str | Path, lang: str, market: str, fmt: str | None = None,
                on_error: str = "fail", run_id: str | None = None, bulk: bool = True) -> IngestResult:
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
    if fmt == "jsonl" and bulk:
        res = _ingest_jsonl_bulk(cat, path, lang, market, run_id)
        if res is not None:
            return res

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
        with registered(con, "incoming_products", table):
            con.execute("INSERT INTO products SELECT * FROM incoming_products "
                        "WHERE id NOT IN (SELECT id FROM products)")
        new = con.execute("SELECT count(*) FROM products").fetchone()[0] - before
    return IngestResult(str(path), rows, len(seen), new, problems, n_problems)
