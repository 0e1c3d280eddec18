"""What the training data changes: (a) title-fragment queries, (b) + shopper queries, (c) + catalog-pool negatives.

    python benchmarks/data_ablation.py ../shared/data/eval-dev [--steps 300] [--seed 0] [--bases static,e5-small]
        [--work DIR] [--json FILE]

Same steps, seed, loss (CAM) and batch for every cell; only the data differs:
- (a) the structured route as it was: queries are 2-4 consecutive title words (`generate --no-shopper`), negatives
  mined among kept positives;
- (b) shopper-like queries (typos, dropped tone marks, local-script brands, slang, units, reordering,
  code-switching, category-level queries), negatives mined among kept positives;
- (c) (b)'s catalog with a newer negative set mined from every product of the language and market
  (`compass mine --pool products`), which training takes as the latest.
Every model is scored on the eval folder and on ONE catalog eval, `compass eval --catalog-split test` on (b)'s
catalog: eval-only shopper queries of its held-out products ranked against all product titles of the language
(train/eval_catalog.py; the split is by product hash, so the test products are the same in every catalog and none
is trained on). Targets (issue 12): (c) beats (a) on the dev retrieval task and
on the catalog eval, with no dev task more than 1 point worse.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from quality_common import (
    TIMINGS,
    build_catalog,
    compass,
    dev_columns,
    evaluate,
    model_path,
    print_table,
    summarize,
    train,
)

MINER = "e5-small"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--steps", type=int, default=300, help="steps for the static model (e5: --e5-steps)")
    ap.add_argument("--e5-steps", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bases", default="static,e5-small")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="data-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    cats = {
        "a": work / "a-fragments.duckdb",
        "b": work / "b-shopper.duckdb",
        "c": work / "c-shopper-pool.duckdb",
    }
    build_catalog(cats["a"], mine_model=MINER, extra_generate=("--no-shopper",))
    build_catalog(cats["b"], mine_model=MINER)
    if not cats["c"].exists():  # (b)'s data and split, plus a newer negative set mined from the whole catalog
        tmp = cats["c"].with_suffix(".building.duckdb")
        shutil.copy(cats["b"], tmp)
        compass("mine", "--model", MINER, "--pool", "products", "--catalog", str(tmp), label="mine c (products)")
        tmp.rename(cats["c"])
    names = {"a": "(a) title fragments", "b": "(b) + shopper queries", "c": "(c) + catalog-pool negatives"}

    rows = {}
    for base in [b.strip() for b in a.bases.split(",") if b.strip()]:
        if base == "static":
            args = ("--base", "static", "--max-steps", str(a.steps), "--batch-size", "128")
        else:
            args = ("--base", model_path(base), "--max-steps", str(a.e5_steps), "--batch-size", "32")
            rows[f"{base} untouched"] = summarize(evaluate(model_path(base), a.eval_dir, cats["b"],
                                                           work / f"eval-{base}-untouched.json"))
        for key, cat in cats.items():
            out = train(cat, work / f"{base}-{key}", *args, "--loss", "cam", "--seed", str(a.seed))
            rows[f"{base} {names[key]}"] = summarize(evaluate(out, a.eval_dir, cats["b"],
                                                              work / f"eval-{base}-{key}.json"))
    cols = dev_columns(rows)
    table = print_table(rows, cols, f"x100, CAM, seed {a.seed}; catalog = shopper-query test split of (b), ranked "
                                    "against all titles of the language")
    for base in [b.strip() for b in a.bases.split(",") if b.strip()]:
        ra, rc = rows[f"{base} {names['a']}"], rows[f"{base} {names['c']}"]
        dev = [c for c in cols if c in ra and c not in ("dev retrieval", "dev classification", "dev macro",
                                                        "catalog macro")]
        worst = min(dev, key=lambda c: rc[c] - ra[c])
        ok = rc["dev retrieval"] > ra["dev retrieval"] and rc["catalog macro"] > ra["catalog macro"] \
            and rc[worst] - ra[worst] >= -1
        print(f"{base}: (c) - (a): dev retrieval {rc['dev retrieval'] - ra['dev retrieval']:+.2f}, catalog "
              f"{rc['catalog macro'] - ra['catalog macro']:+.2f}, worst dev task {worst} {rc[worst] - ra[worst]:+.2f}"
              f" -> {'MET' if ok else 'missed'}")
    TIMINGS["total"] = time.perf_counter() - t0
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in TIMINGS.items()))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "timings": TIMINGS, "table": table}, indent=2,
                                     ensure_ascii=False))


if __name__ == "__main__":
    main()
