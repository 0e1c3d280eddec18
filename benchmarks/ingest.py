"""Ingest throughput: compass's bulk path (DuckDB parses, checks and hashes the JSONL in SQL) versus
row-by-row executemany.

Both run in the same process on the same generated rows, alternating, --repeat times: the median (min-max) of
each, in rows/s of wall time and of CPU time (the process's, DuckDB's threads included; steadier than wall on a
shared machine). Target: bulk >= 50x the baseline and >= 200,000 rows/s.

Measured 28 Nov 2026 on the shared 2-core machine (README, "Catalog, ingest"), the code before alternated in the
same conditions: both cores free, bulk 133,900 rows/s wall (131,000-139,400), 92,400 per CPU-second, 61.2x (before:
128,200 rows/s, 57.0x); other jobs holding about one core, 96,600 rows/s, 35x (before: 67,900, 26x). 200,000 rows/s
is not met.

    python benchmarks/ingest.py [--rows 200000] [--baseline-rows 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from compass.catalog import Catalog, init_catalog
from compass.catalog.ingest import ingest_file
from compass.ids import content_id

WORDS = ["Samsung", "Xiaomi", "เสื้อยืด", "ส่งฟรี", "Hàng", "chính", "hãng", "Murah", "Ori", "Nike", "ครีม",
         "sepatu", "kasut", "baju", "256GB", "XL", "สีดำ", "màu", "đen", "COD"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"sku-{i}", "title": " ".join(rng.choices(WORDS, k=8)), "category": "Fashion > Shoes > Sneakers",
             "attributes": {"brand": rng.choice(WORDS), "size": str(rng.randint(36, 45))},
             "description": " ".join(rng.choices(WORDS, k=20)), "price": round(rng.uniform(10, 999), 2),
             "currency": "THB"} for i in range(n)]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def bench_bulk(rows: list[dict], tmp: Path, i: int = 0) -> tuple[float, float]:
    f = tmp / "bulk.jsonl"
    if not f.exists():
        write_jsonl(rows, f)
    path, _ = init_catalog(tmp / f"bulk{i}.duckdb")
    with Catalog(path) as cat:
        t0, c0 = time.perf_counter(), time.process_time()
        res = ingest_file(cat, f, "th", "TH")
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert res.rows_new == len(rows) == cat.scalar("SELECT count(*) FROM products")
    return dt, dc


def bench_rowwise(rows: list[dict], tmp: Path, i: int = 0) -> tuple[float, float]:
    """The naive way: parse each line and INSERT it, one executemany row at a time, one transaction."""
    f = write_jsonl(rows, tmp / "rows.jsonl")
    path, _ = init_catalog(tmp / f"rows{i}.duckdb")
    with Catalog(path) as cat:
        t0, c0 = time.perf_counter(), time.process_time()
        params = []
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            params.append([content_id("product", "th", "TH", r["id"]), "th", "TH", r["id"], r["title"], r["category"],
                           json.dumps(r["attributes"], ensure_ascii=False), r["description"], r["price"],
                           r["currency"], f.name, None])
        with cat.transaction() as con:
            con.executemany("INSERT INTO products (id, lang, market, source_id, title, category, attributes, "
                            "description, price, currency, source_file, ingest_run) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", params)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert cat.scalar("SELECT count(*) FROM products") == len(rows)
    return dt, dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--baseline-rows", type=int, default=20_000,
                    help="executemany is slow: time it on fewer rows and compare rows/s")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = make_rows(args.rows)
    bulk, base = [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i in range(args.repeat):          # alternate: on a shared machine, load comes and goes
            bulk.append(bench_bulk(rows, tmp, i))
            base.append(bench_rowwise(rows[: args.baseline_rows], tmp, i))

    def rps(n: int, runs: list[tuple[float, float]], k: int) -> tuple[float, str]:
        v = [n / r[k] for r in runs]
        return statistics.median(v), f"{statistics.median(v):>10,.0f} rows/s ({min(v):,.0f}-{max(v):,.0f})"

    for k, what in ((0, "wall"), (1, "CPU")):
        b, bs = rps(args.rows, bulk, k)
        r, rs = rps(args.baseline_rows, base, k)
        print(f"{what:4s} bulk (compass ingest), {args.rows:,} rows: {bs}; executemany, {args.baseline_rows:,} rows: "
              f"{rs}; ratio {b / r:.1f}x (target >= 50x)"
              + (f"; bulk >= 200,000 rows/s: {'met' if b >= 200_000 else 'NOT met'}" if k == 0 else ""))


if __name__ == "__main__":
    main()
