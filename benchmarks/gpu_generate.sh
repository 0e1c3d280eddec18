#!/usr/bin/env bash
# GPU benchmark: compass's vllm backend (plan -> engine -> parse -> catalog) vs raw `LLM.chat` on the same
# 2,000 prompts and the same engine; prints generated tokens/s of each and the ratio (target >= 0.9).
#
#   PYTHON=/path/to/python-with-vllm-and-compass bash benchmarks/gpu_generate.sh [N_PROMPTS]
#
# Needs a CUDA GPU and a python where `import vllm, compass` works (nothing is downloaded: the model is a
# random-weight Llama built here, ~60M parameters, with the tiny-model tokenizer trained on the templates).
# One engine serves both runs (A: raw, B: compass, then A, B again) so load time and memory are paid once.
# Expected runtime: under 8 minutes on one H100.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
N="${1:-2000}"
OUT="${OUT:-$(mktemp -d)}"
# The script is read from stdin, so spawned engine processes could not re-import it: keep the engine in-process.
export VLLM_ENABLE_V1_MULTIPROCESSING=0
"$PY" - "$N" "$OUT" <<'PYEOF'
import json, sys, time
from pathlib import Path

sys.path.insert(0, "tests")
n, out = int(sys.argv[1]), Path(sys.argv[2])

# -- a random model, bigger than the CPU one so the GPU has work: hidden 512, 8 layers, head_dim 64 ----------
from support.tiny_model import build
import torch
from transformers import LlamaConfig, LlamaForCausalLM
model_dir = build(out / "model")
cfg = LlamaConfig.from_pretrained(model_dir)
cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 512, 1536, 8
cfg.num_attention_heads = cfg.num_key_value_heads = 8
cfg.head_dim = 64
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(model_dir, safe_serialization=True)

# -- 2,000 grounded prompts from a synthetic catalog -------------------------------------------------------
from compass.catalog.db import Catalog
from compass.catalog.ingest import ingest_file
from compass.datagen.backends import Sampling
from compass.datagen.plan import plan_grounded
from compass.prompts.library import bundled_library
rows = [{"id": f"p{i}", "title": f"Product {i} brand{i % 50} model {i % 7}", "category": f"Cat {i % 20} > Leaf {i % 5}",
         "attributes": {"brand": f"brand{i % 50}", "colour": ["black", "white", "red"][i % 3]}} for i in range(500)]
(out / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
cat = Catalog(out / "bench.duckdb", create=True)
ingest_file(cat, out / "p.jsonl", "en", "SG", None, "fail", "bench")
planned = plan_grounded(cat, bundled_library(), model=str(model_dir), langs=["en"], n=n,
                        sampling=Sampling(0.8, 0.95, 128), compact=False)

from vllm import LLM
from compass.datagen.llm_run import run_plan
from compass.datagen.vllm_backend import VLLMBackend
be = VLLMBackend(str(model_dir), batch_size=n)
llm = be._llm = LLM(model=str(model_dir), seed=0, max_model_len=2048, gpu_memory_utilization=0.5)
reqs = [p.request for p in planned]
llm.chat([r.messages for r in reqs[:64]], [be.params(r) for r in reqs[:64]], use_tqdm=False)  # warm-up

def raw():
    t0 = time.perf_counter()
    outs = llm.chat([r.messages for r in reqs], [be.params(r) for r in reqs], use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0)

def compass(i):
    cat.con.execute("DELETE FROM generations"); cat.con.execute("DELETE FROM examples")
    t0 = time.perf_counter()
    run_plan(cat, f"bench{i}", planned, be, progress=False)
    dt = time.perf_counter() - t0
    return cat.scalar("SELECT sum(completion_tokens) FROM generations") / dt

a, b = [], []
for i in range(2):
    a.append(raw()); b.append(compass(i))
ra, rb = sum(a) / 2, sum(b) / 2
print(f"prompts: {len(reqs)}, max_tokens 128, GPU: {torch.cuda.get_device_name(0)}")
print(f"raw LLM.chat         : {ra:10.0f} tokens/s ({', '.join(f'{x:.0f}' for x in a)})")
print(f"compass vllm backend : {rb:10.0f} tokens/s ({', '.join(f'{x:.0f}' for x in b)})")
print(f"ratio compass / raw  : {rb / ra:10.3f}  (target >= 0.9)")
PYEOF
