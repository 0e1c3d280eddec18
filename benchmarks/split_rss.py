"""Peak RSS of `assign_splits`: streamed (now) versus every pending row in memory (before), same catalog.

The catalog is synthetic and built in SQL, so it can be large quickly: --products products with their attributes
(brand + model on half of them, as the sample catalogs), five examples per product (their ids, class ids and
translation groups), and a tenth of them translations that reach their product through the source example, as
the split's grouping rules expect. Each side runs in a fresh spawned process on its own copy (peak RSS is its
own: ru_maxrss), --repeat times, alternating; median (min-max). Both must give the identical splits table.

    python benchmarks/split_rss.py --products 200000          # 1,000,000 examples
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mine import _peak_rss_mb, child  # benchmarks/mine.py: peak RSS and the spawn-one-run helper

BUILD = """
INSERT INTO products (id, lang, market, title, category, attributes, content_hash)
SELECT 'p' || i, 'th', 'TH', 'สินค้า ' || i || ' ส่งฟรี ของแท้ 100%', 'บ้าน > ครัว > ' || (i % 300),
       CASE WHEN i % 2 = 0 THEN json_object('brand', 'Brand' || (i % 97), 'model', 'M' || (i // 3), 'colour', 'red')
            ELSE json_object('colour', 'black', 'size', 'XL') END, 'h' || i
FROM range(?) t(i);
INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, product_id, translation_group)
SELECT 'e' || i || '-' || k, 'structured', 'th', 'task' || k, 'anchor ' || i || ' ' || k,
       'positive ' || i || ' ' || k, 'product:p' || i, 'p' || i, CASE WHEN k = 0 THEN 'tg' || i END
FROM range(?) t(i), range(5) u(k);
INSERT INTO examples (id, route, lang, task, anchor, positive, class_id, translation_group, source_example_id)
SELECT 'x' || i, 'translate', 'vi', 'task0', 'anchor vi ' || i, 'positive vi ' || i, 'product:p' || i, 'tg' || i,
       'e' || i || '-0'
FROM range(?) t(i) WHERE i % 10 = 0;
"""


def build(path: Path, n: int) -> int:
    from compass.catalog import Catalog

    with Catalog(path, create=True) as cat:
        with cat.transaction() as con:
            for stmt in filter(str.strip, BUILD.split(";")):
                con.execute(stmt, [n])
        return cat.scalar("SELECT count(*) FROM examples")


def in_memory(cat, policy) -> int:
    """The way before: the pending rows as one polars frame, sorted by id, then batches of 20,000."""
    import polars as pl

    from compass.catalog.writes import insert_rows
    from compass.train.splits import _PENDING_SQL, group_of

    pending = cat.frame(_PENDING_SQL + " ORDER BY e.id")
    added = 0
    for start in range(0, pending.height, 20000):
        batch = pending.slice(start, 20000)
        groups = [group_of(r) for r in batch.iter_rows(named=True)]
        out = pl.DataFrame({"example_id": batch["id"], "split": [policy.side(g) for g in groups],
                            "group_id": groups, "policy_hash": [policy.hash] * batch.height,
                            "run_id": [None] * batch.height},
                           schema={"example_id": pl.Utf8, "split": pl.Utf8, "group_id": pl.Utf8,
                                   "policy_hash": pl.Utf8, "run_id": pl.Utf8})
        with cat.transaction() as con:
            added += insert_rows(con, "splits", out, ["example_id"])
    return added


def run(args, out) -> None:
    from compass.catalog import Catalog
    from compass.train.splits import SplitPolicy, assign_splits

    policy = SplitPolicy()
    cat = Catalog(args.path)
    with cat.transaction() as con:   # the policy row, as assign_splits writes it first
        con.execute("INSERT INTO split_policies (policy_hash, test, dev, seed, grouping) VALUES (?, ?, ?, ?, ?)",
                    [policy.hash, policy.test, policy.dev, policy.seed, policy.grouping])
    t0, c0 = time.perf_counter(), time.process_time()
    added = assign_splits(cat, policy)["added"] if args.side == "streamed" else in_memory(cat, policy)
    res = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "peak_rss_mb": _peak_rss_mb(),
           "added": added, "digest": cat.scalar("SELECT sum(hash(example_id || split || group_id)) FROM splits")}
    cat.close()
    out.put(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--products", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        base = Path(d) / "base.duckdb"
        n_ex = build(base, args.products)
        print(f"split of {n_ex:,} examples ({args.products:,} products), each side in its own process:")
        runs: dict[str, list[dict]] = {"streamed": [], "in memory": []}
        for _ in range(args.repeat):
            for side, rs in runs.items():
                copy = Path(d) / "copy.duckdb"
                shutil.copy(base, copy)
                args.path, args.side = str(copy), side
                rs.append(child(run, args))
                copy.unlink()
    for side, rs in runs.items():
        cells = []
        for k in ("peak_rss_mb", "cpu_s", "wall_s"):
            v = [r[k] for r in rs]
            cells.append(f"{k} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        print(f"  {side:10s} " + "   ".join(cells) + f"   added {rs[0]['added']:,}")
    digests = {r["digest"] for rs in runs.values() for r in rs}
    print(f"  identical splits on both sides: {len(digests) == 1}")
    s, m = (statistics.median(r["peak_rss_mb"] for r in runs[k]) for k in ("streamed", "in memory"))
    print(f"  peak RSS streamed / in memory: {s / m:.2f}")


if __name__ == "__main__":
    main()
