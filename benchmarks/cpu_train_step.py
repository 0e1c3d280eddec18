"""Where a CPU training step of a transformer base goes, and what freezing the word table and a shorter training
token limit save.

    python benchmarks/cpu_train_step.py --catalog demo.duckdb --base e5-small [--steps 8 --batch-size 32 --repeats 3]

The catalog is the demo one (`compass init; ingest --samples; generate --route structured; filter; split`). One
dataset is prepared once; then each repeat trains every variant for --steps steps from the same base, in turn (so
a load spike on a shared machine hits all variants of that repeat, and the per-repeat ratio against "before" is the
robust figure). Per step it times the loss forward (the model's forward and the loss), backward (to the optimizer
hook) and the optimizer step; the first step (warm-up: allocator, thread pools) is left out. Prints medians and
spreads (min-max) over repeats, and the same-repeat ratio against "before", for wall time and for the CPU time the
process used (all threads): on a machine shared with other jobs, wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # what `compass train --base <transformer>` did before: every parameter trained, texts up to the model's 512,
    # every text padded to the longest of the batch
    "before": {"freeze_embeddings": False, "max_seq_length": None, "length_chunks": 0},
    "frozen table": {"freeze_embeddings": True, "max_seq_length": None, "length_chunks": 0},
    "frozen + 128 tokens": {"freeze_embeddings": True, "max_seq_length": 128, "length_chunks": 0},
    "after (default)": {"freeze_embeddings": True, "max_seq_length": 128, "length_chunks": 0},
    "after + chunks of 8": {"freeze_embeddings": True, "max_seq_length": 128, "length_chunks": 8},
    "after + bf16": {"freeze_embeddings": True, "max_seq_length": 128, "length_chunks": 0, "precision": "bf16"},
}


def timed_trainer(spec: dict, overrides: dict, out: str):
    from transformers import TrainerCallback

    from compass.train.trainer import build_trainer

    spec = json.loads(json.dumps(spec))
    spec["config"].update(overrides, out=out)
    times: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            times.append({"t0": time.perf_counter(), "c0": time.process_time()})

        def on_pre_optimizer_step(self, args, state, control, **kw):
            times[-1]["t1"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times[-1]["t2"] = time.perf_counter()
            times[-1]["c2"] = time.process_time()

    trainer, info = build_trainer(spec, callbacks=[Clock()])
    inner = trainer.compute_loss

    def compute_loss(*a, **kw):  # the forward: embeddings of every column and the loss
        t = time.perf_counter()
        out = inner(*a, **kw)
        times[-1]["fwd"] = times[-1].get("fwd", 0.0) + time.perf_counter() - t
        return out

    trainer.compute_loss = compute_loss
    return trainer, info, times


def interleaved(spec: dict, names: list[str], rounds: int, tmp: str) -> dict[str, list[float]]:
    """One optimizer step of each variant in turn, `rounds` times, on the same rows: a load spike on a shared
    machine then hits every variant alike, and the per-round ratio against the first variant is robust."""
    import torch

    trainers = {}
    for n in names:
        trainer, info, times = timed_trainer(spec, VARIANTS[n], f"{tmp}/i-{n.replace(' ', '_')}")
        trainer.create_optimizer_and_scheduler(num_training_steps=rounds + 1)
        batches = iter(trainer.get_train_dataloader())
        trainers[n] = (trainer, batches, times)
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up (allocator, thread pools) and is left out
        for n, (trainer, batches, times) in trainers.items():
            inputs = next(batches)
            times.append({})
            t = time.perf_counter()
            trainer.model.train()
            trainer.compute_loss(trainer.model, inputs).backward()  # forward + backward
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            if r:
                wall[n].append(time.perf_counter() - t)
            print(f"round {r} {n}: {time.perf_counter() - t:.1f}s", file=sys.stderr, flush=True)
    torch.set_grad_enabled(True)
    return wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--base", default="e5-small")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="write the raw figures here")
    ap.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                    help="instead: one step of each variant in turn, ROUNDS times (robust on a shared machine)")
    a = ap.parse_args(argv)

    import torch

    from compass.catalog.db import Catalog
    from compass.train.trainer import TrainConfig, prepare

    names = [v.strip() for v in a.variants.split(",")]
    with tempfile.TemporaryDirectory(prefix="compass-step-") as tmp:
        cfg = TrainConfig(base=a.base, out=f"{tmp}/prep", max_steps=a.steps, batch_size=a.batch_size,
                          save_steps=10**6, logging_steps=10**6, device="cpu", negatives="none")
        with Catalog(a.catalog) as cat:
            spec = prepare(cat, cfg, run_id="bench", echo=lambda line: None)
        if a.interleave:
            wall = interleaved(spec, names, a.interleave, tmp)
            print(f"\n{a.base}, batch {a.batch_size}, {a.interleave} interleaved rounds (after 1 warm-up), torch "
                  f"{torch.__version__}, {torch.get_num_threads()} threads")
            print(f"| variant | step s (median, min-max) | x {names[0]} (same round, median, min-max) |")
            print("|---|---|---|")
            for n in names:
                ratio = [x / b for x, b in zip(wall[n], wall[names[0]])]
                print(f"| {n} | {statistics.median(wall[n]):.1f} ({min(wall[n]):.1f}-{max(wall[n]):.1f}) | "
                      f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")
            if a.json:
                Path(a.json).write_text(json.dumps(wall, indent=2), encoding="utf-8")
            return
        rows: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(a.repeats):
            for n in names:
                trainer, info, times = timed_trainer(spec, VARIANTS[n], f"{tmp}/{n.replace(' ', '_')}-{r}")
                trainer.train()
                steps = [t for t in times[1:] if "t2" in t]  # first step is warm-up
                # called within this iteration only; the default binds this iteration's steps all the same
                med = lambda k, steps=steps: statistics.median(k(t) for t in steps)  # noqa: E731
                rows[n].append({"step_s": med(lambda t: t["t2"] - t["t0"]), "cpu_s": med(lambda t: t["c2"] - t["c0"]),
                                "forward_s": med(lambda t: t["fwd"]),
                                "backward_s": med(lambda t: t["t1"] - t["t0"] - t["fwd"]),
                                "optimizer_s": med(lambda t: t["t2"] - t["t1"]),
                                "trainable": info["trainable_parameters"], "max_len": info["train_max_seq_length"]})
                print(f"repeat {r} {n}: {rows[n][-1]}", file=sys.stderr, flush=True)
    print(f"\n{a.base}, batch {a.batch_size}, {a.steps} steps (first left out), {a.repeats} repeats, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| variant | trainable params | step s (median, min-max) | forward | backward | optimizer | x before "
          "(same repeat, median) | CPU s/step (all threads) | CPU x before |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in names:
        rs = rows[n]
        st = [x["step_s"] for x in rs]
        ratio = [x["step_s"] / b["step_s"] for x, b in zip(rs, rows.get("before", rs))]
        cpu = [x["cpu_s"] for x in rs]
        cpu_ratio = [x["cpu_s"] / b["cpu_s"] for x, b in zip(rs, rows.get("before", rs))]
        print(f"| {n} | {rs[0]['trainable'] / 1e6:.1f}M | {statistics.median(st):.2f} ({min(st):.2f}-{max(st):.2f}) | "
              f"{statistics.median(x['forward_s'] for x in rs):.2f} | "
              f"{statistics.median(x['backward_s'] for x in rs):.2f} | "
              f"{statistics.median(x['optimizer_s'] for x in rs):.2f} | {statistics.median(ratio):.2f} | "
              f"{statistics.median(cpu):.1f} ({min(cpu):.1f}-{max(cpu):.1f}) | {statistics.median(cpu_ratio):.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
