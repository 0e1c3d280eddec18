"""Reading a catalog while a writer runs: what the snapshot copy costs, and what it costs the writer.

Before issue 14 a reader (`compass stats`, `compass sql`) was refused while a writer held the file; now it reads
a private copy of the last committed state. Measured in the same run, median of 3 (with min-max spread):

- reader: `Catalog(read_only=True)` + every `compass stats` section, on the file with no writer (today's path,
  the baseline) versus while another process holds it read-write, idle (the copy's own cost) and while it keeps
  committing (copy + WAL replay + sharing the CPU with the writer);
- writer: the same 40 batch transactions (INSERT of 2,000 examples each) with no reader versus with a reader
  process running `compass stats` back to back (it copies the file each time). The writer's code path is
  unchanged, so what this shows is the reader's share of CPU and disk on the machine.

    python benchmarks/catalog_readers.py [--examples 300000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from compass.catalog import Catalog, init_catalog
from compass.stats import collect

FILL = ("INSERT INTO examples (id, route, lang, task, anchor, positive, class_id) SELECT 'e' || (range + ?), "
        "'structured', 'th', 'query2title', 'anchor ' || md5(range::VARCHAR), 'title ' || md5((range + 7)::VARCHAR), "
        "'c' || (range % 5000) FROM range(?)")


def build(path: Path, n: int) -> None:
    init_catalog(path)
    with Catalog(path) as cat, cat.transaction() as con:
        con.execute(FILL, [0, n])
        con.execute("INSERT INTO products (id, lang, market, title, category) SELECT 'p' || range, 'th', 'TH', "
                    "'title ' || md5(range::VARCHAR), 'c' FROM range(?)", [n // 3])


def read_once(path: Path) -> float:
    t0 = time.perf_counter()
    with Catalog(path, read_only=True) as cat:
        collect(cat, [])
    return time.perf_counter() - t0


def writer_script(path: Path, batches: int, start: int, hold: float) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from compass.catalog import Catalog
        cat = Catalog({str(path)!r})
        print("ready", flush=True)
        t0 = time.perf_counter()
        for b in range({batches}):
            with cat.transaction() as con:
                con.execute({FILL!r}, [{start} + 10_000_000 * (b + 1), 2000])
        print(time.perf_counter() - t0, flush=True)
        time.sleep({hold})
    """)


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f}s (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.duckdb"
        build(path, a.examples)
        size = path.stat().st_size / 2**20
        read_once(path)  # warm-up: imports of the stats sections and the OS page cache
        base, idle, snap, w_alone, w_read = [], [], [], [], []
        for r in range(a.repeats):
            base.append(read_once(path))
            # a writer that holds the file without writing: the copy's own cost, no CPU contention
            w = subprocess.Popen([sys.executable, "-c", writer_script(path, 0, 0, 30.0)], stdout=subprocess.PIPE,
                                 text=True)
            assert w.stdout.readline().strip() == "ready"
            w.stdout.readline()
            idle.append(read_once(path))
            w.kill()
            w.wait()
            # a writer that holds the file (and commits 40 batches) while we read through the snapshot
            w = subprocess.Popen([sys.executable, "-c", writer_script(path, 40, 100_000 * 3 * r, 3.0)],
                                 stdout=subprocess.PIPE, text=True)
            assert w.stdout.readline().strip() == "ready"
            snap.append(read_once(path))
            w.stdout.readline()
            w.wait()
            # writer cost: 40 batches alone, then 40 batches with a reader polling stats back to back
            for polled, out in ((False, w_alone), (True, w_read)):
                start = 100_000 * (3 * r + 1 + polled)  # distinct ids in every writer of the run
                w = subprocess.Popen([sys.executable, "-c", writer_script(path, 40, start, 0)],
                                     stdout=subprocess.PIPE, text=True)
                assert w.stdout.readline().strip() == "ready"
                reader = None
                if polled:
                    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                        import time
                        from pathlib import Path
                        import sys
                        sys.stderr = open("/dev/null", "w")
                        from compass.catalog import Catalog
                        from compass.stats import collect
                        while True:
                            with Catalog(Path({str(path)!r}), read_only=True) as cat:
                                collect(cat, [])
                    """)])
                out.append(float(w.stdout.readline()))
                w.wait()
                if reader:
                    reader.kill()
                    reader.wait()
        print(f"catalog: {a.examples} examples, {a.examples // 3} products, {size:.1f} MiB")
        print(f"reader, no writer (baseline):        {spread(base)}")
        print(f"reader, idle writer (snapshot):      {spread(idle)}   ratio "
              f"{statistics.median(idle) / statistics.median(base):.2f}x")
        print(f"reader, writer at work (snapshot):   {spread(snap)}   ratio "
              f"{statistics.median(snap) / statistics.median(base):.2f}x")
        print(f"writer, 40 batches alone:            {spread(w_alone)}")
        print(f"writer, 40 batches, reader polling:  {spread(w_read)}   ratio "
              f"{statistics.median(w_read) / statistics.median(w_alone):.2f}x")


if __name__ == "__main__":
    main()
