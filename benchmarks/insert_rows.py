"""Idempotent batch insert into a large table: `catalog.writes.insert_rows` versus what it replaces.

A real catalog whose `examples` table already holds --rows rows; then --batches batches, half of each already
stored (a rerun's share), are inserted, each in its own transaction with its commit, as a stage writes them.
Compared in the same run, each on its own copy of the same rows:
- before: `NOT EXISTS` against the whole table plus two count(*) per batch (compass.stage.insert_frame), with
  the primary key on id that `examples` had up to migration 0100;
- `INSERT OR IGNORE` on that primary key (ON CONFLICT DO NOTHING), the obvious alternative;
- insert_rows with the primary key: anti-join, the count from the INSERT's result;
- insert_rows without it (migration 0110: the bulk tables lost their keys), what compass does now.
All must add the same rows. Figures: per batch, median (min-max) of the batches, wall and CPU (the process's CPU
time: steadier than wall on a shared machine). Batch sizes show what a bigger transaction buys: every way costs
O(table) per statement, so the rows per statement set the total.

    python benchmarks/insert_rows.py                                       # table of 1,000,000; batches 500, 20,000
    python benchmarks/insert_rows.py --rows 100000,1000000 --batch 2000    # how a batch's cost grows with the table
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from compass.catalog import Catalog
from compass.catalog.db import registered
from compass.catalog.writes import insert_rows


def anti_join_insert(con, table: str, frame: pl.DataFrame, key: list[str]) -> int:
    """The replaced pattern, verbatim: dedup, NOT EXISTS over the whole table, count(*) before and after."""
    if frame.is_empty():
        return 0
    frame = frame.unique(subset=key, keep="first", maintain_order=True)
    cols = ", ".join(frame.columns)
    cond = " AND ".join(f"t.{k} = f.{k}" for k in key)
    with registered(con, "_incoming", frame):
        before = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming f "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {cond})")
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] - before


def rows(start: int, n: int) -> pl.DataFrame:
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:20] for i in range(start, start + n)]
    return pl.DataFrame({"id": ids, "route": "structured", "lang": "th", "market": "TH", "task": "query2title",
                         "anchor": [f"query {i} เสื้อยืด cotton" for i in range(start, start + n)],
                         "positive": [f"title {i} เสื้อยืด คอกลม cotton 100% XL" for i in range(start, start + n)],
                         "class_id": [f"product:{i}" for i in range(start, start + n)]})


KEYED = "0100_structured_products"   # the last migration before 0110 dropped the bulk tables' primary keys


def build(path: Path, n: int, keyed: bool) -> None:
    with Catalog(path, create=True, upto=KEYED if keyed else None) as cat:
        for s in range(0, n, 250_000):
            with cat.transaction() as con, registered(con, "_b", rows(s, min(250_000, n - s))) as b:
                con.execute(f"INSERT INTO examples BY NAME SELECT * FROM {b}")
        cat.con.execute("CHECKPOINT")


def or_ignore(con, table: str, frame: pl.DataFrame, key: list[str]) -> int:
    frame = frame.unique(subset=key, keep="first", maintain_order=True)
    with registered(con, "_incoming", frame):
        return con.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(frame.columns)}) "
                           f"SELECT {', '.join(frame.columns)} FROM _incoming").fetchone()[0]


# name: (way, on the keyed table)
WAYS = {"before (NOT EXISTS + 2 count), key": (anti_join_insert, True), "INSERT OR IGNORE, key": (or_ignore, True),
        "insert_rows, key": (insert_rows, True), "insert_rows, no key (0110)": (insert_rows, False)}


def timed(path: Path, fn, n: int, batches: int, batch: int, keyed: bool) -> tuple[list[float], list[float], int]:
    wall, cpu, added = [], [], 0
    with Catalog(path, upto=KEYED if keyed else None) as cat:
        for b in range(batches):
            # half already stored (spread over the table), half new
            frame = pl.concat([rows(b * 7919 % (n - batch), batch // 2), rows(n + b * batch, batch - batch // 2)])
            t0, c0 = time.perf_counter(), time.process_time()
            with cat.transaction() as con:
                added += fn(con, "examples", frame, ["id"])
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall, cpu, added


def fmt(t: list[float]) -> str:
    return f"{statistics.median(t) * 1000:7.1f} ms ({min(t) * 1000:.0f}-{max(t) * 1000:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1000000", help="table sizes, comma-separated")
    ap.add_argument("--batch", default="500,20000", help="rows per batch (transaction), comma-separated")
    ap.add_argument("--batches", type=int, default=10)
    args = ap.parse_args()
    for n in (int(x) for x in args.rows.split(",")):
        with tempfile.TemporaryDirectory() as d:
            bases = {k: Path(d) / f"base-{k}.duckdb" for k in (True, False)}
            for keyed, base in bases.items():
                build(base, n, keyed)
            for batch in (int(x) for x in args.batch.split(",")):
                print(f"table of {n:,} rows, {args.batches} batches of {batch:,} (half new), commit included:")
                res = {}
                for name, (fn, keyed) in WAYS.items():
                    copy = Path(d) / "copy.duckdb"
                    shutil.copy(bases[keyed], copy)
                    res[name] = timed(copy, fn, n, args.batches, batch, keyed)
                    copy.unlink()
                    w, c, a = res[name]
                    print(f"  {name:30s} wall {fmt(w)}  CPU {fmt(c)}  = {statistics.median(c) / batch * 1e6:5.1f} "
                          f"us CPU/row  added {a:,}", flush=True)
                assert len({r[2] for r in res.values()}) == 1, "the ways disagree on the rows added"
                b = statistics.median(res[next(iter(WAYS))][1])
                for name in ("insert_rows, key", "insert_rows, no key (0110)"):
                    print(f"  {name} vs before: {b / statistics.median(res[name][1]):.2f}x CPU")


if __name__ == "__main__":
    main()
