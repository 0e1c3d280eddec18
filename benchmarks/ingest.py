"""Ingest throughput: compass's bulk path (validate -> Arrow -> one INSERT) versus row-by-row executemany.

Both run in the same process on the same generated rows, so the ratio holds on a noisy machine.
Target: bulk >= 50x the baseline and >= 200,000 rows/s.

    python benchmarks/ingest.py [--rows 200000] [--baseline-rows 20000]
"""

from __future__ import annotations

import argparse
import json
import random
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


def bench_bulk(rows: list[dict], tmp: Path) -> float:
    f = write_jsonl(rows, tmp / "bulk.jsonl")
    path, _ = init_catalog(tmp / "bulk.duckdb")
    with Catalog(path) as cat:
        t0 = time.perf_counter()
        res = ingest_file(cat, f, "th", "TH")
        dt = time.perf_counter() - t0
        assert res.rows_new == len(rows) == cat.scalar("SELECT count(*) FROM products")
    return dt


def bench_rowwise(rows: list[dict], tmp: Path) -> float:
    """The naive way: parse each line and INSERT it, one executemany row at a time, one transaction."""
    f = write_jsonl(rows, tmp / "rows.jsonl")
    path, _ = init_catalog(tmp / "rows.duckdb")
    with Catalog(path) as cat:
        t0 = time.perf_counter()
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
        dt = time.perf_counter() - t0
        assert cat.scalar("SELECT count(*) FROM products") == len(rows)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--baseline-rows", type=int, default=20_000,
                    help="executemany is slow: time it on fewer rows and compare rows/s")
    args = ap.parse_args()
    rows = make_rows(args.rows)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        bulk = bench_bulk(rows, tmp)
        base = bench_rowwise(rows[: args.baseline_rows], tmp)
    bulk_rps, base_rps = args.rows / bulk, args.baseline_rows / base
    print(f"bulk (compass ingest):   {args.rows:>8} rows in {bulk:7.2f} s = {bulk_rps:>10,.0f} rows/s")
    print(f"row-by-row executemany:  {args.baseline_rows:>8} rows in {base:7.2f} s = {base_rps:>10,.0f} rows/s")
    print(f"ratio bulk/baseline: {bulk_rps / base_rps:.1f}x (target >= 50x); bulk rows/s target >= 200,000: "
          f"{'met' if bulk_rps >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
