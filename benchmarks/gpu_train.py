"""GPU training benchmark: CAM and CachedCAM on one H100/H200 at batch 1024 in bf16 (driven by gpu_train.sh).

Two steps, so the GPU machine needs neither the catalog (duckdb, polars) nor the filters (fastText):

    # anywhere compass is fully installed (CPU is fine): the demo catalog's training rows -> a bundle folder
    python benchmarks/gpu_train.py prepare --out gpu-bundle            # builds the demo catalog first
    python benchmarks/gpu_train.py prepare --out gpu-bundle --catalog compass.duckdb   # or any catalog
    # on the GPU machine (see gpu_train.sh for the offline install)
    python benchmarks/gpu_train.py run --bundle gpu-bundle [--model E5_DIR] [--eval-tasks EVAL_DEV]

`run` trains compass's trainer (the same `build_trainer` as `compass train`) for --steps steps with CAM, CachedCAM
and MultipleNegativesRankingLoss at the same batch, and prints: samples/s and peak GPU memory per loss, the CAM/MNRL
step-time ratio, and the first batch's loss on the GPU (bf16 autocast) against the CPU (fp32) from the same
weights, in eval mode (no dropout), which must agree to 1e-2. Without --model it builds a random-weight model of
multilingual-e5-small's exact shape (BertModel, vocabulary 250,037, 12 layers x 384, 12 heads, FFN 1536, an
XLM-R-style Unigram tokenizer learnt from the bundle's texts): the speed figures hold, the quality figure is
skipped. With --model (the converted e5-small folder: `compass models path e5-small`) and --eval-tasks it also
prints the eval macro of the base and of the CAM-trained model.

`--smoke` runs the same code on a CPU in a minute with a 2-layer model of width 32 (tests/test_gpu_bench.py).
Step times leave the first 2 steps out (CUDA context, cuBLAS autotuning, allocator growth) and take the median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

E5_SHAPE = {"vocab_size": 250037, "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 1536, "max_position_embeddings": 514, "type_vocab_size": 2}
SMOKE_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 514, "type_vocab_size": 2}
PROMPTS = {"query": "query: ", "document": "passage: "}


def prepare(args) -> None:
    """Demo catalog (unless --catalog) -> BUNDLE/dataset (datasets on disk) + BUNDLE/bundle.json."""
    from compass.catalog.db import Catalog
    from compass.train.data import build_training_data
    from compass.train.splits import assign_splits

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = Path(args.catalog) if args.catalog else out / "demo.duckdb"
    if not args.catalog and not catalog.exists():
        for step in (["init"], ["ingest", "--samples"], ["generate", "--route", "structured"], ["filter"], ["split"]):
            subprocess.run([sys.executable, "-m", "compass", *step, "--catalog", str(catalog)], check=True)
    with Catalog(catalog) as cat:
        assign_splits(cat, None, "gpu-bench")
        data = build_training_data(cat, None, args.negatives, args.num_negatives)
    data.dataset.save_to_disk(str(out / "dataset"))
    (out / "bundle.json").write_text(json.dumps({"langs": data.langs, "groups": data.groups,
                                                 "task_ids": data.task_ids, "counts": data.counts}), encoding="utf-8")
    print(f"bundle {out}: {len(data.langs)} training rows from {catalog}; copy it to the GPU machine")


def random_e5(out: Path, texts: list[str], shape: dict, seed: int = 0) -> str:
    """A sentence-transformers folder: random BertModel of `shape`, XLM-R-style Unigram tokenizer (<s>=0, <pad>=1,
    </s>=2, <unk>=3, Metaspace, `<s> A </s>`) learnt from texts, mean pooling, Normalize, e5's prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=8000, special_tokens=specials,
                                                            unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    hf = out / "hf"
    XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                            model_max_length=512).save_pretrained(hf)
    shape = {"vocab_size": tok.get_vocab_size(), **shape}
    torch.manual_seed(seed)
    BertModel(BertConfig(**shape, pad_token_id=1, layer_norm_eps=1e-12)).save_pretrained(hf)
    st = SentenceTransformer(modules=[Transformer(str(hf)), Pooling(shape["hidden_size"], "mean"), Normalize()],
                             device="cpu", prompts=PROMPTS)
    st.save(str(out / "model"))
    return str(out / "model")


def spec_for(bundle: Path, base: str, work: Path, **cfg) -> dict:
    from compass.train.trainer import TrainConfig

    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    config = TrainConfig(base=base, out=str(work), save_steps=10**6, logging_steps=10**6, **cfg)
    return {"config": asdict(config), "dataset": str(bundle / "dataset"), "base": base, "langs": meta["langs"],
            "groups": meta["groups"], "task_ids": meta["task_ids"]}


def timed_run(spec: dict, sync) -> dict:
    """Train spec's steps; median step time over steps 3.., samples/s, peak memory."""
    import torch
    from transformers import TrainerCallback

    from compass.train.trainer import build_trainer

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync()
            stamps.append(time.perf_counter())

    trainer, info = build_trainer(spec, callbacks=[Clock()])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    stamps.append(time.perf_counter())
    trainer.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])][2:] or [stamps[-1] - stamps[0]]
    med = statistics.median(steps)
    batch = spec["config"]["batch_size"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"step_s": med, "spread_s": (min(steps), max(steps)), "samples_per_s": batch / med, "peak_gib": peak,
            "trainer": trainer, "info": info}


def first_loss(spec: dict) -> float:
    """The loss of the first batch in eval mode (no dropout), under the spec's device and precision."""
    import torch

    from compass.devices import resolve_precision
    from compass.train.trainer import build_trainer

    trainer, info = build_trainer(spec)
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.eval()
    dtype = resolve_precision(info["device"], spec["config"]["precision"])
    with torch.no_grad(), torch.autocast(info["device"].split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        return float(trainer.compute_loss(model, batch))


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def eval_macro(model, tasks: str) -> float:
    from compass.train.evaluate import evaluate_model

    return evaluate_model(model, tasks, None, None, batch_size=256)["macro"] * 100


def run(args) -> None:
    import torch

    from compass.devices import resolve_device

    bundle = Path(args.bundle)
    device = "cpu" if args.smoke else resolve_device(args.device)
    on_cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    batch = args.batch_size or (32 if args.smoke else 1024)
    mini = args.mini_batch_size or (8 if args.smoke else 256)
    steps = args.steps or (5 if args.smoke else 30)
    precision = "bf16"
    smoke = " (SMOKE: tiny model on CPU, figures mean nothing)" if args.smoke else ""
    print(f"device {torch.cuda.get_device_name(device) if on_cuda else 'cpu'}, torch {torch.__version__}, batch "
          f"{batch}, {steps} steps, {precision}{smoke}",
          flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compass-gpu-") as tmp:
        work = Path(tmp)
        if args.model:
            base, real = args.model, not args.smoke
        else:
            import datasets

            ds = datasets.load_from_disk(str(bundle / "dataset"))
            texts = list(ds["anchor"]) + list(ds["positive"])
            base, real = random_e5(work / "random", texts, SMOKE_SHAPE if args.smoke else E5_SHAPE), False
            print(f"random-weight model of e5-small's shape at {base} ({time.perf_counter() - t0:.0f}s)", flush=True)
        common = {"batch_size": batch, "max_steps": steps, "device": device, "precision": precision,
                  "mini_batch_size": mini, "seed": 0}
        results = {}
        evaluate = real and args.eval_tasks and Path(args.eval_tasks).is_dir()
        for name, kw in (("CAM", {"loss": "cam"}), ("CachedCAM", {"loss": "cam", "cached": True}),
                         ("MNRL", {"loss": "infonce"})):
            r = timed_run(spec_for(bundle, base, work / name, **common, **kw), sync)
            print(f"{name:9s}: {r['samples_per_s']:8.0f} samples/s, step {r['step_s'] * 1000:.0f} ms "
                  f"(min-max {r['spread_s'][0] * 1000:.0f}-{r['spread_s'][1] * 1000:.0f}), peak GPU memory "
                  f"{r['peak_gib']:.2f} GiB", flush=True)
            if evaluate and name == "CAM":
                r["eval"] = eval_macro(r["trainer"].model.eval(), args.eval_tasks)
            results[name] = {k: v for k, v in r.items() if k != "trainer"}
            del r  # the next loss's peak memory must not include this model and its optimizer state
            free_memory()
        print(f"CAM/MNRL step-time ratio at batch {batch}: {results['CAM']['step_s'] / results['MNRL']['step_s']:.3f}; "
              f"CachedCAM/CAM: {results['CachedCAM']['step_s'] / results['CAM']['step_s']:.3f}", flush=True)
        dev_loss = first_loss(spec_for(bundle, base, work / "l1", **{**common, "loss": "cam"}))
        free_memory()
        cpu_loss = first_loss(spec_for(bundle, base, work / "l2", **{**common, "loss": "cam", "device": "cpu",
                                                                     "precision": "fp32"}))
        diff = abs(dev_loss - cpu_loss)
        print(f"first-step loss, same batch and weights: {device} {precision} {dev_loss:.5f}, cpu fp32 "
              f"{cpu_loss:.5f}, |diff| {diff:.2e} -> {'agree' if diff <= 1e-2 else 'DISAGREE'} (tolerance 1e-2)",
              flush=True)
        if evaluate:
            from sentence_transformers import SentenceTransformer

            base_macro = eval_macro(SentenceTransformer(base, device=device), args.eval_tasks)
            print(f"eval macro x100 ({args.eval_tasks}): base {base_macro:.1f}, after {steps} CAM steps "
                  f"{results['CAM']['eval']:.1f}", flush=True)
        else:
            print("eval macro: skipped (" + ("random weights" if not real else "no --eval-tasks folder") + ")")
    print(f"total {time.perf_counter() - t0:.0f}s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="catalog -> bundle (on any machine with compass fully installed)")
    p.add_argument("--out", required=True)
    p.add_argument("--catalog", help="use this catalog instead of building the demo one")
    p.add_argument("--negatives", default="latest")
    p.add_argument("--num-negatives", type=int, default=1)
    r = sub.add_parser("run", help="the benchmark (on the GPU machine)")
    r.add_argument("--bundle", required=True)
    r.add_argument("--model", help="sentence-transformers folder (converted e5-small); default: random e5 shape")
    r.add_argument("--eval-tasks", help="eval task folder (e.g. eval-dev), with --model")
    r.add_argument("--device", default="auto")
    r.add_argument("--steps", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--mini-batch-size", type=int)
    r.add_argument("--smoke", action="store_true", help="tiny model on CPU: checks the script, not the GPU")
    a = ap.parse_args(argv)
    prepare(a) if a.cmd == "prepare" else run(a)


if __name__ == "__main__":
    main()
