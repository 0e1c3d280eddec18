"""e5-small fine-tuning variants on one GPU: the rows of benchmarks/e5_finetune.py and the e5 cells of
benchmarks/data_ablation.py, in minutes instead of CPU-hours, with more than one seed.

    # here (CPU, compass fully installed): training rows of a catalog -> a bundle, as gpu_train.py prepares them
    python benchmarks/gpu_train.py prepare --catalog CATALOG --out BUNDLES/bundle-demo
    # on the GPU machine (see gpu_train.sh for the offline install)
    python benchmarks/gpu_e5_sweep.py --bundles BUNDLES --model E5_DIR --eval-tasks EVAL_DEV \
        [--catalog-tasks BUNDLES/cattasks-demo] [--budget-s 300] [--json OUT.json]

Every variant trains compass's trainer (`build_trainer`, the code `compass train` runs) with the settings of
e5_finetune.py's CPU runs: CAM, 120 steps, batch 32, learning rate 2e-5, the word table frozen, prompts, in fp32
(so that rows compare with the CPU table; bf16 is gpu_train.py's business). Variants run in order of what they
tell, each scored on the eval folder (and the catalog test tasks exported as BEIR folders, when given), until the
budget is spent; results are written after each variant, so a run cut short keeps what it finished.

Bundles: BUNDLES/bundle-demo (the e5_finetune catalog: demo samples, shopper queries, negatives mined with
e5-small) and, for the data ablation, BUNDLES/bundle-abl-{a,b,c}; a variant whose bundle is missing is skipped.
`--smoke` runs two variants (the first and the third) with a tiny random model on the CPU (tests/test_gpu_bench.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e5_finetune import strip_prompts  # noqa: E402  (stdlib-only imports: fine on the GPU machine)
from gpu_train import E5_SHAPE, SMOKE_SHAPE, free_memory, random_e5, spec_for, timed_run  # noqa: E402

# (name, bundle, overrides of the e5_finetune default, base: "e5" | "bare" (prompts stripped) | "merge:NAME:T")
VARIANTS = [
    ("e5 CAM", "demo", {}, "e5"),
    ("e5 CAM, lowest 8 of 12 layers frozen", "demo", {"freeze_layers": 8}, "e5"),
    ("e5 CAM, no prompts", "demo", {"prompts": False}, "bare"),
    ("e5 CAM, word embeddings trained", "demo", {"freeze_embeddings": False}, "e5"),
    ("e5 CAM (a) title fragments", "abl-a", {}, "e5"),
    ("e5 CAM (b) + shopper queries", "abl-b", {}, "e5"),
    ("e5 CAM (c) + catalog-pool negatives", "abl-c", {}, "e5"),
    ("e5 CAM, seed 1", "demo", {"seed": 1}, "e5"),
    ("e5 CAM, lowest 8 of 12 layers frozen, seed 1", "demo", {"freeze_layers": 8, "seed": 1}, "e5"),
    ("e5 CAM, lr 5e-06", "demo", {"lr": 5e-6}, "e5"),
    ("merge(base, frozen-8) t=0.5", "demo", {}, "merge:e5 CAM, lowest 8 of 12 layers frozen:0.5"),
    ("e5 CAM, seed 2", "demo", {"seed": 2}, "e5"),
    ("e5 CAM, lowest 8 of 12 layers frozen, seed 2", "demo", {"freeze_layers": 8, "seed": 2}, "e5"),
]


def score(model, eval_sets: dict[str, str], device: str) -> dict:
    """{set: {"macro", "retrieval", "classification", "tasks": {name: main x100}}} for each task folder."""
    from compass.train.evaluate import evaluate_model

    out = {}
    for name, folder in eval_sets.items():
        r = evaluate_model(model, folder, None, None, batch_size=256, device=device, precision="fp32")
        pct = (lambda v: None if v is None else round(100 * v, 2))
        out[name] = {"macro": pct(r["macro"]), "retrieval": pct(r["retrieval_macro"]),
                     "classification": pct(r["classification_macro"]),
                     "tasks": {t: pct(v["main"]) for t, v in r["tasks"].items()}}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", required=True, type=Path)
    ap.add_argument("--model", help="converted e5-small folder (default: random weights of its shape)")
    ap.add_argument("--eval-tasks", required=True)
    ap.add_argument("--catalog-tasks", action="append", default=[],
                    help="catalog test tasks as BEIR folders, NAME=DIR; a variant trained on bundle-NAME, or on "
                         "bundle-abl-* for NAME=abl-b, is scored on it (the untouched base on all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=300, help="start no variant after this many seconds")
    ap.add_argument("--only", default="", help="comma list of variant numbers (1-based) to run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, first two variants")
    a = ap.parse_args(argv)

    import torch

    from compass.devices import resolve_device

    t0 = time.perf_counter()
    device = "cpu" if a.smoke else resolve_device(a.device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    catalogs = dict(p.split("=", 1) for p in a.catalog_tasks)
    eval_sets = {"dev": a.eval_tasks, **{f"catalog {k}": v for k, v in catalogs.items()}}

    def sets_for(bundle: str) -> dict[str, str]:
        key = "abl-b" if bundle.startswith("abl-") else bundle
        return {k: v for k, v in eval_sets.items() if k in ("dev", f"catalog {key}")}

    results: dict = {"device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
                     "torch": torch.__version__, "steps": a.steps, "batch_size": a.batch_size, "rows": {}}

    def save() -> None:
        if a.json:
            a.json.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="compass-sweep-") as tmp:
        work = Path(tmp)
        if a.model:
            base = a.model
        else:
            import datasets

            ds = datasets.load_from_disk(str(a.bundles / "bundle-demo" / "dataset"))
            base = random_e5(work / "random", list(ds["anchor"]) + list(ds["positive"]),
                             SMOKE_SHAPE if a.smoke else E5_SHAPE)
        bare = str(strip_prompts(base, work / "bare"))
        from sentence_transformers import SentenceTransformer

        for name, path in (("e5-small untouched", base), ("e5-small untouched, no prompts", bare)):
            results["rows"][name] = {"eval": score(SentenceTransformer(path, device=device), eval_sets, device)}
            print(f"{name}: {json.dumps({k: v['macro'] for k, v in results['rows'][name]['eval'].items()})}",
                  flush=True)
            save()
        saved: dict[str, str] = {}
        only = {int(x) for x in a.only.split(",") if x.strip()}
        variants = [VARIANTS[0], VARIANTS[2]] if a.smoke else VARIANTS  # the smoke model has 2 layers
        for i, (name, bundle, over, kind) in enumerate(variants, 1):
            if only and i not in only:
                continue
            if time.perf_counter() - t0 > a.budget_s:
                print(f"budget spent: {name} and later variants not run", flush=True)
                break
            t1 = time.perf_counter()
            if kind.startswith("merge:"):
                from compass.train.merge import merge_models

                _, src, t = kind.split(":")
                if src not in saved:
                    print(f"{name}: skipped ({src} not trained)", flush=True)
                    continue
                out = work / f"v{i}"
                merge_models(base, saved[src], float(t), out)
                model, row = SentenceTransformer(str(out), device=device), {}
            else:
                bdir = a.bundles / f"bundle-{bundle}"
                if not (bdir / "bundle.json").exists():
                    print(f"{name}: skipped (no {bdir})", flush=True)
                    continue
                cfg = {"loss": "cam", "batch_size": a.batch_size, "max_steps": a.steps, "device": device,
                       "precision": "fp32", "seed": 0, **over}
                r = timed_run(spec_for(bdir, bare if kind == "bare" else base, work / f"v{i}", **cfg), sync)
                model = r["trainer"].model.eval()
                model.save(str(work / f"v{i}-model"))
                saved[name] = str(work / f"v{i}-model")
                row = {"step_ms": round(r["step_s"] * 1000, 1), "config": over, "bundle": bundle}
            row["eval"] = score(model, sets_for(bundle), device)
            row["seconds"] = round(time.perf_counter() - t1, 1)
            results["rows"][name] = row
            print(f"{name}: {json.dumps({k: v['macro'] for k, v in row['eval'].items()})} ({row['seconds']}s)",
                  flush=True)
            save()
            del model
            free_memory()
    results["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    print(f"total {results['total_s']}s")


if __name__ == "__main__":
    main()
