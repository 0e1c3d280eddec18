"""Ingest product catalog files (jsonl, csv, parquet) into the products table.

Two phases: every file of a command is read and checked first (per row, with the file's line number, so a user
gets one line per problem; limits in ingest_rows), then all of them are inserted in one transaction. So a bad
file anywhere in the command (default --on-error fail) or a killed ingest writes nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from compass.catalog.db import Catalog, registered
from compass.catalog.ingest_rows import (
    MAX_ATTR_DEPTH,
    MAX_ATTRIBUTES,
    MAX_CATEGORY,
    MAX_DESCRIPTION,
    MAX_ID,
    MAX_TITLE,
    records,
    validate,
)
from compass.catalog.ingest_versions import CONTENT_HASH_SQL, write_versions
from compass.errors import CompassError
from compass.ids import content_id
from compass.langs import normalize_lang

FORMATS = ("jsonl", "csv", "parquet")
MAX_REPORTED = 50
_WS_RE2 = ("[\\t\\n\\x0B\\x0C\\r \\x{00A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
           "\\x{205F}\\x{3000}]+")


# Text that the normalisation would change: an exotic whitespace character, two spaces, or a space at an end;
# for categories also a '>' without one space on each side, or an empty level.
_DIRTY_RE2 = ("[\\t\\n\\x0B\\x0C\\r\\x{00A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"
              "\\x{3000}]|  |^ | $")
_DIRTY_CAT_RE2 = _DIRTY_RE2 + "|[^ ]>|>[^ ]|^>|>$|> >"


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
    rows_changed: int = 0      # known products whose content changed: a new version, the old one superseded


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


# No row number: the bulk path never names a line (any problem sends the file to the row path), and
# row_number() OVER () would run single-threaded over the whole file.
_FAST_SQL = """
WITH raw AS (
    SELECT * FROM read_json(?, format = 'newline_delimited', columns = {
        id: 'JSON', title: 'JSON', category: 'JSON', attributes: 'JSON', description: 'JSON', price: 'JSON',
        currency: 'JSON'})
), typed AS (
    SELECT
        $type(id) AS t_id, $type(title) AS t_title, $type(category) AS t_cat, $type(attributes) AS t_attr,
        $type(description) AS t_desc, $type(price) AS t_price, $type(currency) AS t_cur,
        id ->> '$' AS raw_id, title ->> '$' AS raw_title, category ->> '$' AS raw_category,
        attributes::VARCHAR AS raw_attributes, description ->> '$' AS description, price ->> '$' AS raw_price,
        currency ->> '$' AS raw_currency
    FROM raw
), normal AS (
    SELECT *,
        nullif(trim(raw_id), '') AS source_id,
        -- The full normalisation is slow (regex replace, list lambdas); most rows are already clean, so a
        -- cheap match decides whether they need it.
        CASE WHEN regexp_matches(raw_title, $dirty) THEN trim(regexp_replace(raw_title, $ws, ' ', 'g'))
             ELSE raw_title END AS title,
        CASE WHEN regexp_matches(raw_category, $dirty_cat)
             THEN array_to_string(list_filter(list_transform(string_split(raw_category, '>'),
                  x -> trim(regexp_replace(x, $ws, ' ', 'g'))), x -> x <> ''), ' > ')
             ELSE raw_category END AS category,
        CASE WHEN raw_attributes IS NULL OR t_attr = 'NULL' OR raw_attributes = '{}' THEN NULL
             ELSE raw_attributes END AS attributes,
        CASE WHEN t_price IN ('BIGINT', 'UBIGINT', 'DOUBLE') THEN TRY_CAST(raw_price AS DOUBLE)
             WHEN t_price = 'VARCHAR' THEN TRY_CAST(nullif(replace(trim(raw_price), ',', ''), '') AS DOUBLE)
        END AS price,
        nullif(upper(trim(raw_currency)), '') AS currency
    FROM typed
)
SELECT * FROM normal
"""
# json_type parses the whole value, which for a long description costs as much as the file's read: a value's
# first character already says string or object (JSON grammar), so json_type only sees the other values.
_TYPE_SQL = "(CASE WHEN starts_with({0}::VARCHAR, '\"') THEN 'VARCHAR' WHEN starts_with({0}::VARCHAR, '{{') " \
            "THEN 'OBJECT' ELSE json_type({0}) END)"
_FAST_BAD = """
    t_title IS DISTINCT FROM 'VARCHAR' OR t_cat IS DISTINCT FROM 'VARCHAR' OR title = '' OR category = ''
    OR (t_id IS NOT NULL AND t_id NOT IN ('NULL', 'VARCHAR', 'BIGINT', 'UBIGINT'))
    OR (t_attr IS NOT NULL AND t_attr NOT IN ('NULL', 'OBJECT'))
    OR (t_desc IS NOT NULL AND t_desc NOT IN ('NULL', 'VARCHAR'))
    OR (t_cur IS NOT NULL AND t_cur NOT IN ('NULL', 'VARCHAR'))
    OR (t_cur = 'VARCHAR' AND NOT regexp_full_match(raw_currency, '[A-Za-z ]{0,16}'))
    OR (t_price IS NOT NULL AND t_price NOT IN ('NULL', 'BIGINT', 'UBIGINT', 'DOUBLE', 'VARCHAR'))
    OR (t_price NOT IN ('NULL') AND price IS NULL AND NOT (t_price = 'VARCHAR' AND trim(raw_price) = ''))
    OR (price IS NOT NULL AND (NOT isfinite(price) OR price < 0))
    -- limits and NUL (ingest_rows): the row path words the message; the brace count bounds the nesting depth
    OR length(raw_title) > $max_title OR length(raw_category) > $max_category OR length(source_id) > $max_id
    OR length(description) > $max_description OR length(attributes) > $max_attributes
    OR length(attributes) - length(replace(replace(attributes, '{', ''), '[', '')) > $max_depth
    OR contains(raw_title, chr(0)) OR contains(raw_category, chr(0)) OR contains(description, chr(0))
    OR contains(source_id, chr(0)) OR contains(attributes, '\\u0000') OR contains(attributes, chr(0))
"""
_LIMITS = {"$max_title": MAX_TITLE, "$max_category": MAX_CATEGORY, "$max_id": MAX_ID,
           "$max_description": MAX_DESCRIPTION, "$max_attributes": MAX_ATTRIBUTES, "$max_depth": MAX_ATTR_DEPTH}


COLUMNS = ["id", "lang", "market", "source_id", "title", "category", "attributes", "description", "price",
           "currency", "source_file", "ingest_run"]


@dataclass
class _Checked:
    """One file read and checked, not yet written: a temp table of the rows to insert (first of each id), with
    their id and content hash (ingest_versions.write_versions reads it as it is).

    A temp table rather than Arrow: the bulk path's rows then never leave DuckDB; and one table, not a checked
    copy and then a hashed copy: each materialised copy of the file costs about a fifth of the ingest."""
    result: IngestResult
    temp: str


def _bulk_jsonl(cat: Catalog, path: Path, lang: str, market: str, run_id: str | None,
                temp: str) -> _Checked | None:
    """All-SQL path for clean JSONL: DuckDB parses, validates and hashes in bulk.

    Returns None when any row needs a message (bad JSON, a type, a required field, a limit): the row-by-row path
    then finds each problem with its line number. Both paths store identical rows (tested).
    """
    # The pattern is a constant of ours, inlined as a literal: as a bound parameter DuckDB recompiles it per row.
    typed = (_FAST_SQL.replace("$ws", f"'{_WS_RE2}'").replace("$dirty_cat", f"'{_DIRTY_CAT_RE2}'")
             .replace("$dirty", f"'{_DIRTY_RE2}'"))
    typed = re.sub(r"\$type\((\w+)\)", lambda m: _TYPE_SQL.format(m.group(1)), typed)
    bad = _FAST_BAD
    for k, v in _LIMITS.items():
        bad = bad.replace(k, str(int(v)))
    con = cat.con
    # One pass: parse, type, normalise, hash and judge each row; the temp table keeps only what is stored plus
    # one `bad` flag (materialising the typing columns for a second query cost about a fifth of the ingest).
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE {temp} AS
                        SELECT {', '.join(COLUMNS)}, {CONTENT_HASH_SQL} AS content_hash, ({bad}) AS bad FROM (
                            SELECT *, ? AS lang, ? AS market, ? AS source_file, ?::VARCHAR AS ingest_run,
                                   substr(sha256(concat_ws(chr(31), 'product', ?, ?, coalesce(source_id, title))),
                                          1, 20) AS id
                            FROM ({typed}))""", [lang, market, path.name, run_id, lang, market, str(path)])
    except Exception:  # duckdb raises on malformed JSON or bytes that are not UTF-8: the precise path reports it
        return None
    # Duplicates by id, as the row path counts them (the id hashes the source id or title).
    n_bad, rows, valid = con.execute(f"SELECT count(*) FILTER (WHERE bad), count(*), count(DISTINCT id) "
                                     f"FROM {temp}").fetchone()
    if n_bad or valid < rows:  # a row to word (type, limit), or duplicate ids: the row path names the lines
        con.execute(f"DROP TABLE {temp}")
        return None
    return _Checked(IngestResult(str(path), rows, valid, 0), temp)


def _check_file(cat: Catalog, path: Path, lang: str, market: str, fmt: str | None, on_error: str,
                run_id: str | None, bulk: bool, temp: str) -> _Checked:
    """Read and check one file; raise IngestError (fail mode) with every problem, write nothing."""
    if path.is_dir():
        raise CompassError(f"{path}: is a directory: pass the catalog files inside it (e.g. {path}/*.jsonl)")
    if not path.is_file():
        raise CompassError(f"{path}: no such file: check the path")
    fmt = detect_format(path, fmt)
    if fmt == "jsonl" and bulk:
        checked = _bulk_jsonl(cat, path, lang, market, run_id, temp)
        if checked is not None:
            return checked

    cols: dict[str, list] = {k: [] for k in COLUMNS}
    seen: dict[str, int] = {}  # product id -> line of its first row
    problems: list[str] = []
    n_problems = rows = 0
    for lineno, rec in records(path, fmt):
        rows += 1
        norm, err = (None, rec) if isinstance(rec, str) else validate(rec)
        if err:
            n_problems += 1
            if len(problems) < MAX_REPORTED:
                problems.append(f"{path}:{lineno}: {err}")
            continue
        pid = content_id("product", lang, market, norm["source_id"] or norm["title"])
        if pid in seen:
            # Two rows for one product in one input: which is right is the user's call, never ours.
            n_problems += 1
            if len(problems) < MAX_REPORTED:
                same = (f"same id {norm['source_id']!r}" if norm["source_id"] is not None else
                        "no id and the same title")
                problems.append(f"{path}:{lineno}: duplicate of line {seen[pid]} ({same}): give each product its "
                                "own id or remove one row (--on-error skip keeps the first)")
            continue
        seen[pid] = lineno
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
    with registered(cat.con, "checked_products", table):
        cat.con.execute(f"CREATE OR REPLACE TEMP TABLE {temp} AS SELECT *, {CONTENT_HASH_SQL} AS content_hash "
                        "FROM checked_products")
    return _Checked(IngestResult(str(path), rows, len(seen), 0, problems, n_problems), temp)


@contextlib.contextmanager
def _one_thread(cat: Catalog) -> Iterator[None]:
    """DuckDB on one thread for the write, then as before.

    Measured on 200,000 benchmark rows (2 cores): inserting and committing the checked rows costs 0.65 CPU-s on
    one thread and 1.0-1.2 on two (DuckDB's parallel append does more work), while the busiest of the
    two threads alone still works 0.6 s: two threads save almost no elapsed time even on free cores, and lose it
    as soon as anything else runs. The read and check before it keep every thread (two halve its time)."""
    before = cat.con.execute("SELECT current_setting('threads')").fetchone()[0]
    cat.con.execute("SET threads = 1")
    try:
        yield
    finally:
        cat.con.execute(f"SET threads = {int(before)}")


def ingest_files(cat: Catalog, jobs: list[tuple[str | Path, str, str]], fmt: str | None = None,
                 on_error: str = "fail", run_id: str | None = None, bulk: bool = True) -> list[IngestResult]:
    """Check every (path, lang, market) first, then insert the new products of all of them in one transaction.

    With on_error='fail' a problem in any file raises before anything is written; with 'skip' the good rows of
    every file are written and the bad ones reported. A product in two files counts as new for the first.
    A known product whose content changed becomes a new version (ingest_versions).
    """
    if on_error not in ("fail", "skip"):
        raise CompassError(f"unknown --on-error {on_error!r}: use fail or skip")
    checked: list[_Checked] = []
    try:
        for i, (path, lang, market) in enumerate(jobs):
            lang = normalize_lang(lang)
            market = (market or "").strip().upper()
            if not (len(market) == 2 and market.isalpha()):
                raise CompassError(f"--market {market!r}: use an ISO 3166 alpha-2 code such as TH, VN, ID, MY, PH")
            checked.append(_check_file(cat, Path(path), lang, market, fmt, on_error, run_id, bulk,
                                       f"_ingest_checked_{i}"))
        with _one_thread(cat), cat.transaction() as con:
            for c in checked:
                c.result.rows_new, c.result.rows_changed = write_versions(con, c.temp, run_id)
    finally:
        for i in range(len(jobs)):
            cat.con.execute(f"DROP TABLE IF EXISTS _ingest_checked_{i}")
    return [c.result for c in checked]


def ingest_file(cat: Catalog, path: str | Path, lang: str, market: str, fmt: str | None = None,
                on_error: str = "fail", run_id: str | None = None, bulk: bool = True) -> IngestResult:
    """Validate every row of `path`, then insert the new products in one transaction."""
    return ingest_files(cat, [(path, lang, market)], fmt, on_error, run_id, bulk)[0]


def ingest(catalog: Catalog | str | Path | None, files: list[str | Path] | None = None, lang: str | None = None,
           market: str | None = None, fmt: str | None = None, on_error: str = "fail",
           samples: bool = False) -> tuple[str, list[IngestResult]]:
    """`compass ingest` as a function: check every file, write all new products in one transaction, under an
    `ingest` run record (lineage). Returns (run id, one result per file).

    Ingest is a source, not a catalog-fed stage: its input is files, and with on_error='fail' one bad row anywhere
    must leave the catalog unchanged, so it commits once for the whole command rather than once per batch.
    """
    from compass.catalog.bundled import sample_files

    if samples:
        if files:
            raise CompassError("give FILES or --samples, not both")
        jobs = sample_files()
    else:
        if not files:
            raise CompassError("no FILES given: pass product catalog files, or --samples for the bundled ones")
        if not lang or not market:
            raise CompassError("--lang and --market are required with FILES (e.g. --lang th --market TH)")
        jobs = [(f, lang, market) for f in files]
    cat = catalog if isinstance(catalog, Catalog) else Catalog(catalog)
    try:
        with cat.run("ingest", {"files": [str(f) for f, _, _ in jobs], "lang": lang, "market": market,
                                "format": fmt, "samples": samples, "on_error": on_error}) as run:
            results = ingest_files(cat, jobs, fmt, on_error, run.id)
            run.summary.update(new_products=sum(r.rows_new for r in results),
                               changed_products=sum(r.rows_changed for r in results))
        return run.id, results
    finally:
        if cat is not catalog:
            cat.close()
