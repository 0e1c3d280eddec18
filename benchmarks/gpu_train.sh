#!/usr/bin/env bash
# One prepared GPU benchmark for one NVIDIA H100/H200, offline, under 8 minutes (see benchmarks/gpu_train.py).
#
#   bash benchmarks/gpu_train.sh --bundle DIR [--wheels DIR] [--model E5_DIR] [--eval-tasks DIR] [--steps N]
#
# Before, on a machine with compass fully installed and a network (CPU is fine):
#   python benchmarks/gpu_train.py prepare --out gpu-bundle       # demo catalog -> training rows (~2 MB)
#   # the wheel folder: compass itself, no dependencies (the GPU machine's Python already has torch,
#   # transformers, sentence-transformers and what they need: datasets, accelerate, numpy, scikit-learn):
#   pip wheel --no-deps -w gpu-wheels .                           # ~0.5 MB
#   # only if that Python lacks them (each is small):
#   pip download --no-deps -d gpu-wheels 'datasets>=2.20' 'accelerate>=1.1'
# The catalog (duckdb, polars: ~75 MB of wheels), the filters (fastText) and vLLM stay out of this path:
# `import compass.train.trainer` needs none of them, and the bundle carries the prepared training rows.
# The converted e5-small folder (`compass models path e5-small`, 470 MB in float32) is optional: without --model
# the script builds a random-weight model of the same shape (speed figures hold; the eval figure is skipped).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
wheels=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
if ! "$PY" -c "import compass.train.trainer" 2>/dev/null; then
  # A venv over the system site-packages: torch and friends come from there, compass from the wheel folder
  # (or, without one, from this checkout: needs setuptools, no network).
  venv="${COMPASS_GPU_VENV:-$root/.venv-gpu}"
  [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
  if [ -n "$wheels" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" --no-deps "$wheels"/*.whl
  else
    "$venv/bin/pip" install -q --no-index --no-deps --no-build-isolation "$root"
  fi
  PY="$venv/bin/python"
fi
"$PY" -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'sentence-transformers', st.__version__, \
'cuda', torch.cuda.is_available())"
exec timeout 470 "$PY" "$here/gpu_train.py" run "${args[@]}"
