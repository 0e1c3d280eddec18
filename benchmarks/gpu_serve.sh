#!/usr/bin/env bash
# One prepared serving benchmark for one NVIDIA H100/H200, offline, under 8 minutes (see benchmarks/gpu_serve.py):
# BF16 against FP8 (torchao compiled, and vLLM on `compass export-fp8`'s folder) for e5-small, e5-base, e5-large.
#
#   bash benchmarks/gpu_serve.sh [--wheels DIR] [--model E5_SMALL_DIR] [--sizes small,base,large] [--no-vllm]
#
# The GPU machine's Python has torch, transformers and sentence-transformers; vLLM is optional (its section is
# skipped with a message when `import vllm` fails; --vllm-python PY points at another venv). The rest comes from a
# wheel folder built before, on any machine with a network (CPU is fine), ~5 MB in all (< 60 MB):
#   pip wheel --no-deps -w serve-wheels .                           # compass itself, ~0.5 MB
#   pip download --no-deps -d serve-wheels 'compressed-tensors>=0.12' loguru   # the FP8 export's format, ~0.3 MB
#   pip download --no-deps -d serve-wheels torchao                  # ~3.4 MB: the release that matches the GPU
#                                                                   # machine's torch (torchao's compatibility table)
#   # only if that Python lacks them: pip download --no-deps -d serve-wheels pydantic pydantic-core psutil
# e5-small's real weights (`compass models path e5-small`, 470 MB) are optional: without --model every model has
# random weights of its shape (speed figures hold; cosines say little about FP8 fidelity on trained weights).
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
if [ -n "$wheels" ] || ! "$PY" -c "import compass.train.fp8_export" 2>/dev/null; then
  # A venv over the system site-packages: torch, transformers, sentence-transformers (and vLLM, if there) come from
  # there; compass, compressed-tensors and torchao from the wheel folder (without one: compass from this checkout).
  venv="${COMPASS_GPU_VENV:-$root/.venv-gpu}"
  [ -x "$venv/bin/python" ] || "$PY" -m venv --system-site-packages "$venv"
  if [ -n "$wheels" ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$wheels" --no-deps "$wheels"/*.whl
  else
    "$venv/bin/pip" install -q --no-index --no-deps --no-build-isolation "$root"
    echo "no --wheels folder: torchao and compressed-tensors only if already installed"
  fi
  PY="$venv/bin/python"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
"$PY" -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'sentence-transformers', st.__version__, \
'cuda', torch.cuda.is_available())"
exec timeout 470 "$PY" "$here/gpu_serve.py" run --budget-s 430 ${args[@]+"${args[@]}"}
