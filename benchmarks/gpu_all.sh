#!/usr/bin/env bash
# One GPU call (H100/H200, offline, under 10 minutes) over the folder benchmarks/gpu_carry.py builds (< 64 MB):
#   1. gpu_train.py with e5-small's real weights: samples/s and peak memory for CAM, CachedCAM and MNRL at batch
#      1024 in bf16, the CAM/MNRL ratio, GPU-vs-CPU first-step loss, and the eval-dev macro before/after;
#   2. gpu_e5_sweep.py: the e5_finetune.py variants and the data_ablation.py e5 cells in fp32, until ~560 s.
#
#   python benchmarks/gpu_carry.py --out .gpu --catalog demo=... [--catalog abl-a=... ...]   # here, on CPU
#   bash benchmarks/gpu_all.sh .gpu                                                          # there
# Results: $OUT/gpu_train.log, $OUT/sweep.json, $OUT/sweep.log ($OUT defaults to /tmp/gpu-out).
set -u
C=${1:-.gpu}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
python3 -c "import torch, transformers, sentence_transformers as st, pyarrow; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'sentence-transformers', st.__version__, 'pyarrow', pyarrow.__version__)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/compass-site \
  "$C"/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/compass-site
python3 -c "import datasets, compass.train.trainer; print('datasets', datasets.__version__)" || exit 1
gunzip -c "$C/e5-small-pruned-q4.bin.gz" > /tmp/e5-small-q4.bin
python3 -c "from compass.e5_convert import convert; convert('/tmp/e5-small', src='/tmp/e5-small-q4.bin')" \
  >/dev/null 2>&1 || { echo "e5-small conversion failed"; exit 1; }
echo "== e5-small converted at $(el)s"
F='it/s\]|s/it\]|Warning|warn\(|transformers\]'
timeout 240 python3 "$here/gpu_train.py" run --bundle "$C/bundle-demo" --model /tmp/e5-small --eval-tasks "$C/eval-dev" \
  > "$OUT/gpu_train.log" 2>&1; echo "gpu_train rc $?"
grep -Ev "$F" "$OUT/gpu_train.log" | tail -25
echo "== gpu_train done at $(el)s"
left=$(( 560 - $(el) ))
cats=(); for d in "$C"/cattasks-*; do [ -d "$d" ] && cats+=(--catalog-tasks "${d##*/cattasks-}=$d"); done
timeout $left python3 "$here/gpu_e5_sweep.py" --bundles "$C" --model /tmp/e5-small --eval-tasks "$C/eval-dev" \
  "${cats[@]}" --budget-s $(( left - 50 )) --json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1; echo "sweep rc $?"
grep -Ev "$F" "$OUT/sweep.log" | grep -E "^(e5|merge|budget|total|Traceback|  File|[A-Za-z]+Error)" | tail -30
echo "== all done at $(el)s"
