"""GPU serving benchmark: BF16 against FP8 for e5-small, e5-base and e5-large shapes on one H100/H200 (gpu_serve.sh).

    python benchmarks/gpu_serve.py run [--model E5_SMALL_DIR] [--sizes small,base,large] [--vllm-python PY]
    python benchmarks/gpu_serve.py run --smoke --device cpu     # the same code on a CPU, tiny shapes, in a minute

For each model: embeddings/s at batch 512 x 64 tokens (median of 3 runs, min-max) and p50 latency at batch 1 x 64
tokens, and the cosine of its embeddings to BF16 sentence-transformers' on the same 512 inputs, for
- `st-bf16`: sentence-transformers, BF16, eager (the reference);
- `bf16-compiled`: the same forward (transformer, mean pooling, normalize) under torch.compile: the baseline FP8
  must beat, since torchao's FP8 only pays compiled (its activation quantization is fused there);
- `torchao-fp8`: torchao Float8DynamicActivationFloat8WeightConfig(PerRow) (FP8 weights per output channel,
  activations per token: the layout of compass's FP8_DYNAMIC export), torch.compile'd;
- `vllm-bf16` / `vllm-fp8`: vLLM's LLM.embed on the model folder in BF16 and on `compass export-fp8`'s folder, in
  their own process (vLLM may be missing: skipped with a message). vLLM figures are end to end (scheduling, pooling)
  from token ids; the others time the forward on token ids already on the GPU, so compare FP8 with BF16 within one
  engine.
Every input is exactly 64 tokens (texts from the gate set, truncated), given as token ids to every engine.

e5-small has real weights with --model (the converted folder, `compass models path e5-small`); otherwise, and for
the e5-base / e5-large shapes, a random-weight BertModel of the shape (XLM-R-style tokenizer learnt from the gate
texts, vocabulary table of the real size) from benchmarks/gpu_train.py. Cosines of random weights say little about
FP8 fidelity on a trained model; only the real-weight row is held to the >= 0.995 target.

A time budget (--budget-s, default 430 s) orders the work by what the issue asks first and skips, with a message,
what would not finish. Results: one JSON line per (model, engine) and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHAPES = {  # multilingual-e5 {small, base, large}: BertModel / XLM-R layouts
    "small": {"vocab_size": 250037, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 1536, "max_position_embeddings": 514, "type_vocab_size": 2},
    "base": {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 2},
    "large": {"vocab_size": 250002, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
              "intermediate_size": 4096, "max_position_embeddings": 514, "type_vocab_size": 2},
}
# --smoke: head_dim 64 (what vLLM's CPU attention runs), two layers
SMOKE_SHAPES = {name: {"vocab_size": 4000, "hidden_size": h, "num_hidden_layers": 2, "num_attention_heads": h // 64,
                       "intermediate_size": 2 * h, "max_position_embeddings": 128, "type_vocab_size": 2}
                for name, h in (("small", 128), ("base", 192), ("large", 256))}
TOKENS, BATCH = 64, 512


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        print(f"SKIPPED {what}: ~{need:.0f}s needed, {max(self.left(), 0):.0f}s of the budget left", flush=True)
        return False


def gate_texts() -> list[str]:
    path = REPO / "train" / "data" / "gate_texts.jsonl"
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def inputs_of(model, n: int) -> dict:
    """n inputs of exactly TOKENS tokens: gate texts run together from a different start each, truncated."""
    import torch

    base = gate_texts()
    texts = [" ".join(base[(i * 7 + j) % len(base)] for j in range(12)) for i in range(n)]
    tok = model.tokenizer(texts, truncation=True, max_length=TOKENS, padding="max_length", return_tensors="pt")
    assert int(tok["attention_mask"].sum(dim=1).min()) == TOKENS, "a benchmark text is under 64 tokens"
    return {"input_ids": tok["input_ids"], "attention_mask": torch.ones_like(tok["input_ids"])}


def mean_pool(hf, input_ids, attention_mask):
    """Transformer -> mean pooling -> L2 normalize: what the e5 sentence-transformers folders do."""
    import torch

    h = hf(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (batch, tokens, hidden)
    m = attention_mask.unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1).float() / m.sum(1).float(), dim=-1)


def timed(fn, ids, mask, sync, batches: int) -> dict:
    """Embeddings/s at BATCH (median of 3 runs of `batches` batches, with min-max) and p50 latency at batch 1."""
    import torch

    with torch.inference_mode():
        for _ in range(2):  # warm-up: autotuning, compile of both shapes, allocator growth
            fn(ids, mask)
            fn(ids[:1], mask[:1])
        sync()
        rates = []
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(batches):
                fn(ids, mask)
            sync()
            rates.append(batches * ids.shape[0] / (time.perf_counter() - t))
        lat = []
        for i in range(30):
            t = time.perf_counter()
            j = i % ids.shape[0]
            fn(ids[j:j + 1], mask[j:j + 1])
            sync()
            lat.append(time.perf_counter() - t)
        emb = fn(ids, mask).float().cpu()
    return {"emb_per_s": round(statistics.median(rates)), "spread": [round(min(rates)), round(max(rates))],
            "p50_ms": round(1000 * statistics.median(lat), 2), "embeddings": emb}


def cosine(a, b) -> dict:
    import torch

    c = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
    return {"cos_mean": round(float(c.mean()), 5), "cos_min": round(float(c.min()), 5)}


def build_model(name: str, args, work: Path) -> tuple[str, bool]:
    """(folder, real weights?): --model for small, else a random-weight model of the shape."""
    if name == "small" and args.model and not args.smoke:
        return args.model, True
    sys.path.insert(0, str(HERE))
    from gpu_train import random_e5

    shape = (SMOKE_SHAPES if args.smoke else SHAPES)[name]
    return random_e5(work / f"random-{name}", gate_texts() * 3, shape), False


def torch_engines(name: str, folder: str, args, budget: Budget, device: str) -> dict:
    import copy

    import torch
    from sentence_transformers import SentenceTransformer

    dtype = torch.bfloat16
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    st = SentenceTransformer(folder, device=device).to(dtype).eval()
    feats = inputs_of(st, args.batch)
    ids, mask = feats["input_ids"].to(device), feats["attention_mask"].to(device)
    out = {}

    def st_fn(i, m):
        return st({"input_ids": i, "attention_mask": m})["sentence_embedding"]

    out["st-bf16"] = timed(st_fn, ids, mask, sync, args.batches)
    ref = out["st-bf16"]["embeddings"]
    hf = st[0].auto_model
    compile_ok = device.startswith("cuda") or args.compile_on_cpu
    if not compile_ok:
        print("SKIPPED bf16-compiled / torchao-fp8 compile on CPU (--smoke): pass --compile-on-cpu to try", flush=True)
    elif budget.allows(f"{name} bf16-compiled", 60):
        fn = torch.compile(lambda i, m: mean_pool(hf, i, m), dynamic=False)
        out["bf16-compiled"] = timed(fn, ids, mask, sync, args.batches)
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as e:
        print(f"SKIPPED torchao-fp8: torchao is not installed ({e}); see gpu_serve.sh --wheels", flush=True)
    else:
        if not device.startswith("cuda"):
            print("SKIPPED torchao-fp8: FP8 matmuls need a CUDA GPU with FP8 (sm_89+)", flush=True)
        elif budget.allows(f"{name} torchao-fp8", 80):
            hf8 = copy.deepcopy(hf)
            # the pooler is unused by mean pooling, as in compass's export
            quantize_(hf8, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
                      filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and "pooler" not in fqn)
            fn = torch.compile(lambda i, m: mean_pool(hf8, i, m), dynamic=False)
            out["torchao-fp8"] = timed(fn, ids, mask, sync, args.batches)
    for r in out.values():
        r.update(cosine(r.pop("embeddings"), ref))
    torch._dynamo.reset()  # compiled graphs hold the models: the next size needs the GPU memory
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"out": out, "ref": ref, "ids": feats["input_ids"]}


def export(name: str, folder: str, work: Path, device: str) -> str:
    from compass.errors import CompassError
    from compass.train.fp8_card import INFO_FILE
    from compass.train.fp8_export import export_fp8

    out = work / f"fp8-{name}"
    try:
        info = export_fp8(folder, out, device=device, overwrite=True, echo=lambda line: None)
    except CompassError as e:  # a gate below its thresholds still leaves the folder: time it, say so
        print(f"e5-{name}: {e}", flush=True)
        info = json.loads((out / INFO_FILE).read_text())
    g = info["gate"]
    print(json.dumps({"model": f"e5-{name}", "export": str(out), "gate_passed": g["passed"],
                      "gate_mean_cos": g["mean_cos"], "gate_min_cos": g["min_cos"],
                      "size_ratio_vs_bf16": g["size_ratio"]}), flush=True)
    return str(out)


def vllm_ready(folder: str, dst: Path) -> str:
    """The BF16 folder as vLLM should read it (pooling, normalize, token limit; compass.train.vllm_serve), in a copy
    with its weights linked: a --model folder is left as it is."""
    from sentence_transformers import SentenceTransformer

    from compass.train.vllm_serve import vllm_ready_copy

    return str(vllm_ready_copy(Path(folder), SentenceTransformer(folder, device="cpu"), dst))


def vllm_engine(python: str, folder: str, dtype: str, ids, batches: int, timeout: float) -> dict | None:
    """vLLM in its own process (`vllm-worker` below): GPU memory is freed when it exits."""
    import torch

    with tempfile.TemporaryDirectory(prefix="compass-vllm-bench-") as tmp:
        job, out = Path(tmp) / "job.pt", Path(tmp) / "out.pt"
        torch.save({"model": folder, "dtype": dtype, "ids": ids, "batches": batches}, job)
        try:
            proc = subprocess.run([python, str(Path(__file__).resolve()), "vllm-worker", str(job), str(out)],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"vLLM on {folder} did not finish in {timeout:.0f}s", flush=True)
            return None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            print(f"vLLM failed on {folder} ({dtype}):\n{tail}", flush=True)
            return None
        return torch.load(out)


def vllm_worker(job_path: str, out_path: str) -> None:
    """Runs under the Python that has vLLM: LLM.embed on token ids; throughput, p50 latency, embeddings."""
    import torch
    from vllm import LLM

    job = torch.load(job_path)
    ids = job["ids"].tolist()
    kw = dict(model=job["model"], dtype=job["dtype"], gpu_memory_utilization=0.5, max_model_len=TOKENS + 2)
    if not torch.cuda.is_available():
        kw["enforce_eager"] = True
    try:
        llm = LLM(runner="pooling", **kw)
    except TypeError:
        llm = LLM(task="embed", **kw)
    prompts = [{"prompt_token_ids": x} for x in ids]
    embed = lambda ps: llm.embed(ps, use_tqdm=False)  # noqa: E731
    embed(prompts)
    embed(prompts[:1])
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(job["batches"]):
            embed(prompts)
        rates.append(job["batches"] * len(prompts) / (time.perf_counter() - t))
    lat = []
    for i in range(30):
        t = time.perf_counter()
        embed(prompts[i % len(prompts):][:1])
        lat.append(time.perf_counter() - t)
    emb = torch.tensor([o.outputs.embedding for o in embed(prompts)])
    import vllm

    torch.save({"emb_per_s": round(statistics.median(rates)), "spread": [round(min(rates)), round(max(rates))],
                "p50_ms": round(1000 * statistics.median(lat), 2), "embeddings": emb, "vllm": vllm.__version__},
               out_path)


def find_vllm(args) -> str | None:
    python = args.vllm_python or sys.executable
    probe = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"SKIPPED vLLM: not importable by {python} (pip install vllm, or pass --vllm-python)", flush=True)
        return None
    print(f"vLLM {probe.stdout.strip()} ({python})", flush=True)
    return python


def run(args) -> None:
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke:
        args.batch, args.batches = min(args.batch, 16), 1
    on_cuda = device.startswith("cuda")
    print(f"device {torch.cuda.get_device_name(device) if on_cuda else 'cpu'}, torch {torch.__version__}, "
          f"batch {args.batch} x {TOKENS} tokens" + (" (SMOKE: tiny shapes, figures mean nothing)" if args.smoke
                                                     else ""), flush=True)
    if on_cuda and torch.cuda.get_device_capability(device) < (8, 9):
        print("WARNING: this GPU has no FP8 tensor cores (sm_89+ needed): FP8 rows will fail or be emulated")
    budget = Budget(args.budget_s)
    t0 = time.perf_counter()
    rows: dict[str, dict] = {}
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    vllm_python = None if args.no_vllm else find_vllm(args)
    with tempfile.TemporaryDirectory(prefix="compass-serve-") as tmp:
        work = Path(tmp)
        plan = []
        for name in sizes:
            if not budget.allows(f"{name} (torch engines)", 45 if name != "large" else 90):
                continue
            folder, real = build_model(name, args, work)
            label = f"e5-{name}" + ("" if real else " (random)")
            res = torch_engines(name, folder, args, budget, device)
            for engine, r in res["out"].items():
                rows[f"{label}|{engine}"] = r
                print(json.dumps({"model": label, "engine": engine, **r}), flush=True)
            fp8 = ready = None
            if vllm_python and budget.allows(f"{name} export", 60):
                fp8, ready = export(name, folder, work, device), vllm_ready(folder, work / f"ready-{name}")
            plan.append((name, label, ready, fp8, res))
        import gc

        gc.collect()
        if on_cuda:  # vLLM sizes its cache from the free GPU memory: hand back what this process cached
            torch.cuda.empty_cache()
        # vLLM last: the figures the issue asks first (base and up) before e5-small
        for name, label, folder, fp8, res in sorted(plan, key=lambda p: p[0] == "small"):
            for engine, path, dtype in (("vllm-bf16", folder, "bfloat16"), ("vllm-fp8", fp8, "auto")):
                if path is None or not budget.allows(f"{label} {engine}", 100 if name != "large" else 130):
                    continue
                r = vllm_engine(vllm_python, path, dtype, res["ids"], args.batches, min(budget.left(), 240))
                if r is None:
                    continue
                r.update(cosine(r.pop("embeddings"), res["ref"]))
                rows[f"{label}|{engine}"] = r
                print(json.dumps({"model": label, "engine": engine, **r}), flush=True)
    print_table(rows)
    print(f"total {time.perf_counter() - t0:.0f}s")


def print_table(rows: dict[str, dict]) -> None:
    print("\n| model | engine | emb/s at 512x64 (min-max) | vs BF16 same engine | p50 ms at batch 1 | cos mean / min "
          "vs st-bf16 |\n|---|---|---|---|---|---|")
    baseline = {"torchao-fp8": "bf16-compiled", "vllm-fp8": "vllm-bf16"}
    for key, r in rows.items():
        model, engine = key.split("|")
        base = rows.get(f"{model}|{baseline.get(engine, '')}")
        ratio = f"{r['emb_per_s'] / base['emb_per_s']:.2f}x" if base else ""
        print(f"| {model} | {engine} | {r['emb_per_s']} ({r['spread'][0]}-{r['spread'][1]}) | {ratio} | "
              f"{r['p50_ms']} | {r['cos_mean']:.5f} / {r['cos_min']:.5f} |")
    print("target: FP8 >= 1.3x BF16 (same engine) from e5-base up; cosine >= 0.995 on real weights")


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "vllm-worker":  # vLLM's venv: no argparse of ours
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return vllm_worker(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", help="converted e5-small folder (real weights); default: random weights")
    r.add_argument("--sizes", default="small,base,large")
    r.add_argument("--device", default="auto")
    r.add_argument("--batch", type=int, default=BATCH)
    r.add_argument("--batches", type=int, default=8, help="batches per timed run (3 runs, median)")
    r.add_argument("--budget-s", type=float, default=430)
    r.add_argument("--vllm-python", help="Python with vLLM (default: this one)")
    r.add_argument("--no-vllm", action="store_true")
    r.add_argument("--compile-on-cpu", action="store_true")
    r.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script, not the GPU")
    args = ap.parse_args(argv)
    run(args)


if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports __main__
    main()
