"""The Ray Data executor against the local executor, stage by stage, on a generated catalog (benchmarks/scale.py's).

    python benchmarks/ray_executor.py --size 10k --reps 3 --work /tmp/ray-bench [--cpus 2] [--nodes 2] [--start mine]

One local Ray cluster (`--cpus` CPUs, 127.0.0.1; its start-up is timed apart; with `--nodes N`, N nodes of
cpus / N CPUs each, every one a raylet with its own object store, started by `ray.cluster_utils.Cluster` on this
machine: shards and results cross between object stores as on a real cluster), then per repetition two copies of
the same ingested catalog: the chain structured, langid, quality, dedup_signatures, dedup (global: the driver),
split, encode and mine (benchmarks/scale.py's static model; `--no-mine` stops after split) runs with
the local executor on one and with Ray on the other, stage by stage (wall seconds, this process
and Ray's workers together). Reported per stage: the median of the repetitions and its spread (min-max) for
each executor, and the ratio Ray / local (the baseline, measured in the same run); and the peak RSS of the driver
with each executor and of the largest Ray worker process (`Peaks`). Each repetition also checks
that the two catalogs are identical table by table (rows minus run ids and times). On one small machine parity
is the expectation: the point of the executor is the same result on more machines.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHAIN = [("structured", {}), ("langid", {}), ("quality", {}), ("dedup_signatures", {}), ("dedup", {}),
         ("split", {"test": 0.1, "dev": 0.05})]
# then mining with the static model of benchmarks/scale.py: `encode` and `mine` (both on Ray: each actor loads the
# model from its path; mine's pools are shipped to the actors through the object store)
MINING = [("encode", {"sources": ["anchors", "positives"], "batch_size": 256}), ("mine", {"progress": False})]
TABLES = {"examples": ["id"], "decisions": ["example_id", "stage", "params_hash"],
          "minhash_signatures": ["text_hash", "shingling"], "example_signatures": ["example_id", "field"],
          "splits": ["example_id"], "negatives": ["set_id", "example_id", "rank"],
          "mined_examples": ["set_id", "example_id"]}
VOLATILE = {"run_id", "created_at"}


def base_catalog(n: int, work: Path) -> Path:
    from scale import MARKETS, write_catalog

    from compass.catalog.db import Catalog, init_catalog
    from compass.catalog.ingest import ingest_files

    path = work / f"base-{n}.duckdb"
    if not path.exists():
        files = write_catalog(n, work / f"files-{n}")
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        init_catalog(tmp)
        with Catalog(tmp) as cat:
            ingest_files(cat, [(f, f.stem, MARKETS[f.stem]) for f in files])
        tmp.rename(path)
    return path


def same(a: Path, b: Path) -> None:
    from compass.catalog.db import Catalog

    for name, key in TABLES.items():
        frames = []
        for p in (a, b):
            with Catalog(p, read_only=True) as cat:
                f = cat.frame(f"SELECT * FROM {name}")
            frames.append(f.drop([c for c in f.columns if c in VOLATILE]).sort(key))
        if not frames[0].equals(frames[1]):
            raise SystemExit(f"{name}: the ray executor's catalog differs from the local one")


class Peaks:
    """Peak RSS (MB) while a block runs, sampled every 0.2 s: of this process (the driver: the local executor's
    whole work, the Ray executor's planning and commits) and of the largest Ray worker process (`ray::...`, a
    child of the local cluster this process started). A per-process figure: what one node must hold."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.driver = self.worker = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss / 2**20)
            for child in self.me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.name().startswith("ray::") or "ray::" in " ".join(child.cmdline()[:1]):
                        self.worker = max(self.worker, child.memory_info().rss / 2**20)
            self._stop.wait(0.2)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    from scale import parse_size

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="10k")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--nodes", type=int, default=1, help="Ray nodes on this machine, --cpus split among them")
    ap.add_argument("--work", type=Path, default=Path("ray-bench"))
    ap.add_argument("--no-mine", action="store_true", help="stop after split (no encode and mine)")
    ap.add_argument("--start", default="structured", help="time from this stage on (the ones before run once, "
                    "locally, untimed)")
    args = ap.parse_args()
    if not 1 <= args.nodes <= args.cpus:   # a node of 0 CPUs takes no actor: the run would wait forever
        ap.error(f"--nodes {args.nodes} with --cpus {args.cpus}: need 1 <= nodes <= cpus, e.g. --nodes 2 --cpus 2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    import compass
    from compass.runner import build_stage

    n = parse_size(args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    base = base_catalog(n, args.work)
    if not args.no_mine:
        from scale import build_static_model

        model = str(build_static_model(args.work / "static-model"))
        mining = [(name, {**cfg, "model": model}) for name, cfg in MINING]
    chain = CHAIN + (mining if not args.no_mine else [])
    names = [name for name, _ in chain]
    if args.start not in names:
        ap.error(f"--start {args.start}: use one of {', '.join(names)}")
    first = names.index(args.start)
    if first:   # the stages before --start once, with the local executor, untimed: the base of every repetition
        done = args.work / f"base-{n}-before-{args.start}.duckdb"
        if not done.exists():
            shutil.copy(base, done.with_suffix(".tmp"))
            for name, cfg in chain[:first]:
                compass.run(done.with_suffix(".tmp"), build_stage(name, cfg), progress=False)
            done.with_suffix(".tmp").rename(done)
        base = done
    chain = chain[first:]
    t0 = time.perf_counter()
    if args.nodes > 1:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus // args.nodes,
                                                                "include_dashboard": False})
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=args.cpus // args.nodes)
        ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    else:
        # address="local": a new cluster even where another one (or the address file of one) is left over
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="ERROR", log_to_driver=False)
    startup = time.perf_counter() - t0
    times: dict[str, dict[str, list[float]]] = {name: {"local": [], "ray": []} for name, _ in chain}
    rss: dict[str, dict[str, list[float]]] = {name: {"local": [], "ray": [], "worker": []} for name, _ in chain}
    for rep in range(args.reps):
        cats = {}
        for ex in ("local", "ray"):
            cats[ex] = args.work / f"rep{rep}-{ex}.duckdb"
            shutil.copy(base, cats[ex])
        for name, cfg in chain:
            for ex in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):   # alternate who goes first
                t = time.perf_counter()
                with Peaks() as peak:
                    compass.run(cats[ex], build_stage(name, cfg), executor=ex, progress=False)
                times[name][ex].append(time.perf_counter() - t)
                rss[name][ex].append(peak.driver)
                if ex == "ray":
                    rss[name]["worker"].append(peak.worker)
        same(cats["local"], cats["ray"])
        for p in cats.values():
            p.unlink()
        print(f"rep {rep + 1}/{args.reps}: identical catalogs ({', '.join(TABLES)})", flush=True)
    ray.shutdown()
    if args.nodes > 1:
        cluster.shutdown()
    print(f"\n{n} products, {args.cpus} Ray CPUs on {args.nodes} node(s), median of {args.reps} (min-max), wall s; "
          f"Ray start-up {startup:.1f} s (not counted)")
    print("| stage | local | ray | ray / local |\n|---|---|---|---|")
    total = {"local": 0.0, "ray": 0.0}
    for name, _ in chain:
        med = {ex: statistics.median(v) for ex, v in times[name].items()}
        total = {ex: total[ex] + med[ex] for ex in total}
        cell = {ex: f"{med[ex]:.1f} ({min(v):.1f}-{max(v):.1f})" for ex, v in times[name].items()}
        print(f"| {name} | {cell['local']} | {cell['ray']} | {med['ray'] / med['local']:.2f} |")
    print(f"| chain | {total['local']:.1f} | {total['ray']:.1f} | {total['ray'] / total['local']:.2f} |")
    print("\npeak RSS MB, median (min-max): the driver with each executor, and the largest Ray worker process")
    print("| stage | local (driver) | ray (driver) | ray (largest worker) |\n|---|---|---|---|")
    for name, _ in chain:
        cell = {k: f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})" if v else "-"
                for k, v in rss[name].items()}
        print(f"| {name} | {cell['local']} | {cell['ray']} | {cell['worker']} |")


if __name__ == "__main__":
    main()
