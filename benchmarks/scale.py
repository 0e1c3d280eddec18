"""Scale: each stage of the chain at 10k, 100k and 1M products, through the real CLI, one child process a command.

    python benchmarks/scale.py --sizes 10k,100k --work /tmp/scale              # every stage, both sizes
    python benchmarks/scale.py --sizes 1M --stages ingest,structured,split --work /tmp/scale
    python benchmarks/scale.py --work /tmp/scale --table                       # print what is recorded

Catalogs: generated from the bundled samples (catalog/samples/{lang}.jsonl, nine languages): every product takes
a sample listing of its language as its template (category, attribute shape, description), a new id, a new model
code, and a title drawn from the words of that language's sample titles; about 8% are second listings of an
earlier item by another seller (same brand and model, other id, a title sharing about half its words). Seeded:
the same size gives the same files.

Stages, in order, each a `python -m compass ...` child on its own catalog (one per size, under --work):
ingest (one command a language), structured (`generate --route structured`), langid, quality, dedup (`filter
--stages X`), split, mine (`mine --model <static>`: a StaticEmbedding with a tokenizer learnt from the sample
titles, untrained: mining's cost does not depend on the weights). Per stage: CPU seconds (user + system of the
child and its threads, from wait4), wall seconds, peak RSS (ru_maxrss of the child), the catalog's size on disk
after it. The exponent of a stage between two sizes is log10(CPU ratio) / log10(size ratio): 1.0 is linear.

--work keeps the generated files, catalogs and results (results.json); a stage already measured at a size is not
run again (--redo to run it again). A stage needs the ones before it at that size. On a shared machine the wall
time moves with the load; CPU seconds move less; peak RSS does not. A stage run again on its own output has
nothing left to do: --snapshots keeps a copy of the catalog as it was before each stage (before-STAGE.duckdb,
the catalog's size each), and --redo then runs the stage again on that copy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "catalog" / "samples"
LANGS = ["th", "vi", "id", "ms", "fil", "my", "km", "lo", "en"]
MARKETS = {"th": "TH", "vi": "VN", "id": "ID", "ms": "MY", "fil": "PH", "my": "MM", "km": "KH", "lo": "LA", "en": "SG"}
STAGES = ["ingest", "structured", "langid", "quality", "dedup", "split", "mine"]
DUP_RATE = 0.08
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "COMPASS_LOCK_WAIT": "60"}


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- the generator -----------------------------------------------------------------------------------------

def _templates(lang: str) -> tuple[list[dict], list[str]]:
    rows = [json.loads(line) for line in (SAMPLES / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines()]
    words = sorted({w for r in rows for w in r["title"].split() if len(w) > 1 and not any(c in w for c in "|[]")})
    return rows, words


def write_catalog(n: int, folder: Path, seed: int = 0) -> list[Path]:
    """n products over the nine languages as {lang}.jsonl in folder; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for li, lang in enumerate(LANGS):
        path = folder / f"{lang}.jsonl"
        files.append(path)
        if path.exists():
            continue
        rng = random.Random(f"{seed}-{lang}-{n}")
        rows, words = _templates(lang)
        count = n // len(LANGS) + (1 if li < n % len(LANGS) else 0)
        items: list[tuple[dict, str, str, list[str]]] = []   # (template, brand, model, title words) per item
        tmp = path.with_suffix(".part")
        with tmp.open("w", encoding="utf-8") as fh:
            for i in range(count):
                if items and rng.random() < DUP_RATE:        # another seller's listing of an earlier item
                    t, brand, model, tw = items[rng.randrange(len(items))]
                    keep = rng.sample(tw, k=max(1, len(tw) // 2))
                    title_words = keep + rng.sample(words, k=len(tw) - len(keep))
                    rng.shuffle(title_words)
                else:
                    t = rows[rng.randrange(len(rows))]
                    attrs = t.get("attributes") or {}
                    brand = str(attrs.get("brand") or rng.choice(words))
                    model = f"{rng.choice('ABCDEFGHKMNPRSTXZ')}{rng.randint(10, 99999)}"
                    title_words = rng.sample(words, k=rng.randint(4, 9))
                    items.append((t, brand, model, title_words))
                attrs = {**(t.get("attributes") or {}), "brand": brand, "model": model}
                title = " ".join([brand, *title_words[:2], model, *title_words[2:]])
                desc = t.get("description") or ""
                fh.write(json.dumps({
                    "id": f"{lang}-{i}", "title": title, "category": t["category"], "attributes": attrs,
                    "description": f"{title}. {desc}" if desc else title,
                    "price": round(rng.uniform(1, 500) * (t.get("price") or 10) / 10, 2),
                    "currency": t.get("currency"),
                }, ensure_ascii=False) + "\n")
        tmp.rename(path)
    return files


def build_static_model(folder: Path) -> Path:
    """An untrained StaticEmbedding with a tokenizer learnt from the sample titles (mining's encoder here)."""
    if (folder / "modules.json").exists():
        return folder
    code = ("import json, sys; from pathlib import Path; from compass.train.static_base import build_static_model; "
            f"texts = [json.loads(l)['title'] for p in sorted(Path({str(SAMPLES)!r}).glob('*.jsonl')) "
            "for l in p.read_text(encoding='utf-8').splitlines()]; "
            f"build_static_model(texts, embedding_dim=256, vocab_size=8000).save({str(folder)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, cwd=ROOT)
    return folder


# -- measuring ---------------------------------------------------------------------------------------------

def measured(cmd: list[str], log: Path) -> dict:
    """Run one child; its CPU seconds (user + system, all its threads), wall seconds and peak RSS."""
    t0 = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, env=ENV, cwd=ROOT)
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {rc}: see {log}")
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": wall, "peak_rss_mb": ru.ru_maxrss / 1024}


def stage_commands(stage: str, size_dir: Path, files: list[Path], model: Path | None) -> list[list[str]]:
    compass = [sys.executable, "-m", "compass"]
    cat = ["--catalog", str(size_dir / "catalog.duckdb")]
    if stage == "ingest":
        return [[*compass, "ingest", str(f), "--lang", f.stem, "--market", MARKETS[f.stem], *cat] for f in files]
    if stage == "structured":
        return [[*compass, "generate", "--route", "structured", *cat]]
    if stage in ("langid", "quality", "dedup"):
        return [[*compass, "filter", "--stages", stage, *cat]]
    if stage == "split":
        return [[*compass, "split", *cat]]
    if stage == "mine":
        return [[*compass, "mine", "--model", str(model), "--device", "cpu", "--quiet", *cat]]
    raise SystemExit(f"unknown stage {stage!r}: use {', '.join(STAGES)}")


def tree() -> str:
    """The commit measured (+ 'dirty' when the working tree differs from it)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                          check=False).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT, check=False).stdout
    return head.strip() + (" dirty" if dirty.strip() else "")


def disk_mb(size_dir: Path) -> float:
    return sum(p.stat().st_size for p in size_dir.glob("catalog.duckdb*")) / 2**20


def snapshot(size_dir: Path, stage: str, keep: bool, restore: bool) -> None:
    """Before `stage`: put back its copy of the catalog (`restore`: the first stage this call runs), else keep a
    copy of the catalog as it is now (--snapshots), or refresh an older copy (the stages before it ran again)."""
    cat, snap = size_dir / "catalog.duckdb", size_dir / f"before-{stage}.duckdb"
    files = [(cat, snap), (Path(f"{cat}.wal"), Path(f"{snap}.wal"))]
    if restore and snap.exists():
        files = [(b, a) for a, b in files]
    elif not (keep or snap.exists()):
        return
    for src, dst in files:
        dst.unlink(missing_ok=True)
        if src.exists():
            shutil.copyfile(src, dst)


def run_size(n: int, stages: list[str], work: Path, results: dict, redo: bool, keep: bool = False) -> None:
    size_dir = work / label(n)
    files = write_catalog(n, size_dir / "input")
    model = build_static_model(work / "static-model") if "mine" in stages else None
    if not (size_dir / "catalog.duckdb").exists():
        subprocess.run([sys.executable, "-m", "compass", "init", "--catalog", str(size_dir / "catalog.duckdb")],
                       check=True, env=ENV, cwd=ROOT, capture_output=True)
    first = True
    for stage in STAGES:
        if stage not in stages:
            continue
        key = f"{label(n)}/{stage}"
        if key in results and not redo:
            print(f"  {key}: measured before (--redo to run again)", flush=True)
            continue
        snapshot(size_dir, stage, keep, restore=first)
        first = False
        runs = [measured(cmd, size_dir / "log.txt") for cmd in stage_commands(stage, size_dir, files, model)]
        res = {"products": n, "stage": stage, "cpu_s": sum(r["cpu_s"] for r in runs),
               "wall_s": sum(r["wall_s"] for r in runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
               "catalog_mb": disk_mb(size_dir), "commands": len(runs),
               "load_avg": os.getloadavg()[0], "at": time.strftime("%Y-%m-%d %H:%M:%S"), "tree": tree()}
        results[key] = res
        (work / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"  {key:16s} CPU {res['cpu_s']:8.1f} s  wall {res['wall_s']:8.1f} s  "
              f"peak RSS {res['peak_rss_mb']:7.0f} MB  catalog {res['catalog_mb']:7.0f} MB  "
              f"(load {res['load_avg']:.1f})", flush=True)


def table(results: dict) -> str:
    sizes = sorted({r["products"] for r in results.values()})
    head = "| stage | " + " | ".join(f"{label(n)} CPU s / wall s / RSS MB" for n in sizes)
    exps = list(itertools.pairwise(sizes))
    head += "".join(f" | exponent {label(a)}->{label(b)}" for a, b in exps) + " |"
    lines = [head, "|" + "---|" * (1 + len(sizes) + len(exps))]
    for stage in STAGES:
        cells, cpu = [], {}
        for n in sizes:
            r = results.get(f"{label(n)}/{stage}")
            cells.append(f"{r['cpu_s']:.1f} / {r['wall_s']:.1f} / {r['peak_rss_mb']:.0f}" if r else "not measured")
            if r:
                cpu[n] = r["cpu_s"]
        for a, b in exps:
            cells.append(f"{math.log10(cpu[b] / cpu[a]) / math.log10(b / a):.2f}" if a in cpu and b in cpu
                         and cpu[a] > 0 else "-")
        if any(c != "not measured" for c in cells[:len(sizes)]):
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    disk = [f"{label(n)}: {max(r['catalog_mb'] for r in results.values() if r['products'] == n):.0f} MB"
            for n in sizes]
    return "\n".join(lines) + "\n\ncatalog on disk after the last stage measured: " + ", ".join(disk)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10k,100k,1M", help="products, comma-separated (10k, 100k, 1M, 2500)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from: " + ", ".join(STAGES))
    ap.add_argument("--work", type=Path, default=Path("scale-work"), help="files, catalogs and results.json")
    ap.add_argument("--redo", action="store_true", help="run stages already measured again (on the copy from before "
                                                          "the stage, where --snapshots kept one)")
    ap.add_argument("--snapshots", action="store_true", help="keep a copy of the catalog before each stage")
    ap.add_argument("--table", action="store_true", help="only print the table of what results.json holds")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rpath = args.work / "results.json"
    results = json.loads(rpath.read_text(encoding="utf-8")) if rpath.exists() else {}
    if not args.table:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise SystemExit(f"--stages: unknown {', '.join(bad)}: use {', '.join(STAGES)}")
        for n in (parse_size(s) for s in args.sizes.split(",")):
            print(f"{label(n)} products ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}):", flush=True)
            run_size(n, stages, args.work, results, args.redo, args.snapshots)
    print(table(results))


if __name__ == "__main__":
    main()
