"""Reading and checking product rows one by one: every problem gets the file's line number and a fix.

The limits are part of the contract with the later stages (prompts, the structured route, filters): a product
that passes ingest must never crash or flood them. They are documented in the README; the bulk SQL path in
ingest.py checks the same limits (a test compares both paths).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

from compass.errors import CompassError

FIELDS = ["id", "title", "category", "attributes", "description", "price", "currency"]
REQUIRED = ("title", "category")

# Limits, in characters (Python str length = DuckDB length()). Marketplaces cap titles at a few hundred characters
# and descriptions at a few thousand; these leave room while keeping one product far below any model context.
MAX_ID = 256
MAX_TITLE = 1_000
MAX_CATEGORY = 1_000
MAX_DESCRIPTION = 20_000
MAX_ATTRIBUTES = 20_000          # the attributes object as compact JSON
MAX_ATTR_DEPTH = 8               # nesting of objects/arrays; the attributes object itself is level 1
LIMITS = {"id": MAX_ID, "title": MAX_TITLE, "category": MAX_CATEGORY, "description": MAX_DESCRIPTION}
# NUL is refused rather than stripped: it is never meaningful in a listing, usually means a broken export, and a
# silent edit would make the stored text differ from the source without a word.
NUL = "\x00"

# Whitespace runs collapse to one space. Python and DuckDB (RE2) spell the same class, so the bulk SQL path and
# the row-by-row path normalise identically (a test compares them).
_WS_CHARS = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS = re.compile(f"[{_WS_CHARS}]+")
# Lone surrogates are what `surrogateescape` decoding makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def clean(text: str) -> str:
    return _WS.sub(" ", text).strip(" ")


def decode(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 become lone surrogates, reported per line by `records`."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _not_utf8(text: str) -> str | None:
    m = _UNDECODABLE.search(text)
    if m is None:
        return None
    byte = ord(m.group()) - 0xDC00
    return (f"not UTF-8 (byte {byte:#04x} at column {m.start() + 1}): re-save the file as UTF-8 "
            "(e.g. `iconv -f WINDOWS-874 -t UTF-8`)")


def json_error(e: json.JSONDecodeError) -> str:
    # json's messages may end in "at" ("Unterminated string starting at"): never say "at at".
    return f"{e.msg.removesuffix(' at')} at column {e.colno}"


def records(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
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
    text = decode(path)
    if fmt == "jsonl":
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            bad = _not_utf8(line)
            if bad:
                yield lineno, bad
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, f"invalid JSON ({json_error(e)}): fix the line so it is one JSON object"
            except RecursionError:
                yield lineno, (f"nested too deeply to read (attributes allow {MAX_ATTR_DEPTH} levels): flatten the "
                               "attributes")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "title" not in reader.fieldnames:
        raise CompassError(f"{path}:1: CSV header lacks a 'title' column (has {reader.fieldnames}): "
                           f"the header must name {', '.join(FIELDS)}")
    if _not_utf8(",".join(reader.fieldnames)):
        raise CompassError(f"{path}:1: {_not_utf8(','.join(reader.fieldnames))}")
    for rec in reader:
        lineno = reader.line_num
        if None in rec:
            yield lineno, "more values than header columns: quote fields that contain commas"
            continue
        bad = next((b for b in map(_not_utf8, (v for v in rec.values() if v)) if b), None)
        if bad:
            yield lineno, bad
            continue
        rec = {k: (v if v != "" else None) for k, v in rec.items()}
        if rec.get("attributes"):
            try:
                rec["attributes"] = json.loads(rec["attributes"])
            except (json.JSONDecodeError, RecursionError):
                yield lineno, "field 'attributes': not a JSON object: write it as {\"key\": \"value\"}"
                continue
        yield lineno, rec


def _depth_and_nul(obj: object) -> tuple[int, bool]:
    """Nesting depth of objects/arrays and whether any key or string holds NUL, without recursion (the value may
    be nested far beyond Python's recursion limit: that is what this guards against)."""
    depth, nul = 0, False
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            depth = max(depth, d)
            nul = nul or any(NUL in str(k) for k in o)
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            depth = max(depth, d)
            stack.extend((v, d + 1) for v in o)
        elif isinstance(o, str) and NUL in o:
            nul = True
        if depth > MAX_ATTR_DEPTH:
            break
    return depth, nul


def _text_problem(name: str, v: str) -> str | None:
    if len(v) > LIMITS[name]:
        return (f"field '{name}': {len(v):,} characters, over the limit of {LIMITS[name]:,}: shorten it (or "
                "--on-error skip)")
    if NUL in v:
        return f"field '{name}': contains a NUL character (\\u0000): remove it from the source"
    return None


def validate(rec: object) -> tuple[dict | None, str | None]:
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
        if (err := _text_problem(name, v)) is not None:
            return None, err
    out["title"] = clean(rec["title"])
    out["category"] = " > ".join(p for p in (clean(x) for x in rec["category"].split(">")) if p)
    for name in REQUIRED:
        if not out[name]:
            return None, f"field '{name}': empty after removing whitespace and '>' separators: give it text"
    sid = rec.get("id")
    if isinstance(sid, bool) or (sid is not None and not isinstance(sid, (str, int))):
        return None, f"field 'id': expected a string or integer, got {type(sid).__name__}"
    out["source_id"] = None if sid is None or str(sid).strip() == "" else str(sid).strip()
    if out["source_id"] is not None and (err := _text_problem("id", out["source_id"])) is not None:
        return None, err
    attrs = rec.get("attributes")
    if attrs is not None and not isinstance(attrs, dict):
        return None, f"field 'attributes': expected an object, got {type(attrs).__name__}: write {{\"key\": \"value\"}}"
    if attrs:
        depth, nul = _depth_and_nul(attrs)
        if depth > MAX_ATTR_DEPTH:
            return None, (f"field 'attributes': nested deeper than the limit of {MAX_ATTR_DEPTH} levels: flatten "
                          "it (or --on-error skip)")
        if nul:
            return None, "field 'attributes': contains a NUL character (\\u0000): remove it from the source"
    out["attributes"] = json.dumps(attrs, ensure_ascii=False, separators=(",", ":")) if attrs else None
    if out["attributes"] is not None and len(out["attributes"]) > MAX_ATTRIBUTES:
        return None, (f"field 'attributes': {len(out['attributes']):,} characters as JSON, over the limit of "
                      f"{MAX_ATTRIBUTES:,}: keep the attributes that describe the product (or --on-error skip)")
    desc = rec.get("description")
    if desc is not None and not isinstance(desc, str):
        return None, f"field 'description': expected a string, got {type(desc).__name__}"
    if desc is not None and (err := _text_problem("description", desc)) is not None:
        return None, err
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
    if cur is not None and not re.fullmatch(r"[A-Za-z ]{0,16}", cur):
        return None, f"field 'currency': {cur[:20]!r} is not an ISO 4217 code such as THB, VND, IDR"
    out["currency"] = (cur.strip().upper() or None) if cur else None
    return out, None
