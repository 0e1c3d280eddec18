"""`compass train`: catalog -> sentence-transformers model folder, with CAM (or InfoNCE) on mixed-task batches.

Two phases, so data-parallel workers never touch the catalog (one DuckDB writer at a time):
1. prepare (main process, catalog open): split unsplit examples by the catalog's rule, read the train split and its
   negatives into a `datasets.Dataset`, build the base (a fresh StaticEmbedding for ``--base static``), write both
   under ``OUT/.compass-train/``;
2. fit (1 process, or N via ``train/distributed.py`` with gloo and ``gather_across_devices``): the library's
   SentenceTransformerTrainer with our loss and language-balanced sampler; checkpoints in ``OUT/checkpoints``, so a
   killed run resumes from the last one when started again with the same command.
Then the main process evaluates the model on the catalog's test split (and ``--eval-tasks``), writes the model
card, and records the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compass.errors import CompassError
from compass.models import resolve_model
from compass.registry import losses
from compass.train.losses import make_loss, task_policy_for  # noqa: F401  (registers the losses)
from compass.train.model_setup import freeze_lower_layers, training_prompts, transformer_module

if TYPE_CHECKING:  # the catalog (duckdb, polars) is needed to prepare, not to fit (a GPU box may lack them)
    from compass.catalog.db import Catalog

log = logging.getLogger("compass.train")
WORK = ".compass-train"
STATIC_LR, TRANSFORMER_LR = 0.2, 2e-5  # static tables want a large step (sentence-transformers' static recipe)


@dataclass
class TrainConfig:
    base: str = "static"  # "static" or a sentence-transformers model directory / Hub id in the local cache
    out: str = "model"
    loss: str = "cam"  # cam | infonce
    batch_size: int = 64  # global batch (the loss sees all of it; each of N processes holds batch_size / N)
    cached: bool = False
    mini_batch_size: int = 32
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    lr: float | None = None  # default: 0.2 for static, 2e-5 for transformers
    temperature: float = 0.05
    symmetric: bool = False
    task_policy: str = "default"  # default (category labels are no negatives for free-text anchors) | none
    langs: list[str] | None = None
    negatives: str = "latest"  # set id | latest | none
    num_negatives: int = 1
    lang_temperature: float = 3.0
    # anchor: only anchors are unique in a batch, shared positives (CAM's false negatives) may meet | text: all texts
    batch_dedup: str = "anchor"
    seed: int = 0
    nproc: int = 1
    embedding_dim: int = 256
    vocab_size: int = 24000
    tokenizer_texts: list[str] = field(default_factory=list)
    eval_tasks: str | None = None
    logging_steps: int = 10
    save_steps: int = 200
    keep_checkpoints: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N (compass.devices)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16: mixed precision, fp32 weights
    gradient_checkpointing: bool = False
    prompts: bool = True  # anchors get the base's query prompt, positives/negatives its document prompt
    freeze_embeddings: bool = True  # transformer bases: the word-embedding table is not trained (see fit)
    freeze_layers: int = 0  # transformer bases: also freeze the embedding block and the lowest N layers (see fit)
    max_seq_length: int | None = 128  # transformer bases: token limit while training (the saved model keeps its own)
    # transformer forward in length-sorted chunks of N rows (None or 0: off; measured slower on CPU, see README)
    length_chunks: int | None = None
    missing_negatives: str = "pairs"  # pairs | drop: rows with fewer than num_negatives mined negatives
    overwrite: bool = False  # discard checkpoints of another config in OUT

    def __post_init__(self) -> None:
        if self.loss not in losses:
            raise CompassError(f"--loss {self.loss!r}: {losses.unknown(self.loss)}")
        if self.task_policy not in ("default", "none"):
            raise CompassError(f"--task-policy {self.task_policy!r}: use default or none")
        if self.batch_dedup not in ("anchor", "text"):
            raise CompassError(f"--batch-dedup {self.batch_dedup!r}: use anchor or text")
        if self.nproc < 1 or self.batch_size % self.nproc:
            raise CompassError(f"--batch-size {self.batch_size} must be a multiple of --nproc {self.nproc} "
                               "(it is the global batch, split evenly across processes)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise CompassError("give --epochs > 0 or --max-steps > 0")
        if self.missing_negatives not in ("pairs", "drop"):
            raise CompassError(f"--missing-negatives {self.missing_negatives!r}: use pairs or drop")
        if self.freeze_layers < 0:
            raise CompassError(f"--freeze-layers {self.freeze_layers}: give 0 (train every layer) or more")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise CompassError(f"--max-seq-length {self.max_seq_length}: give at least 8 tokens")
        if self.nproc > 1 and self.device.strip().lower().startswith("cuda:"):
            raise CompassError(f"--device {self.device} with --nproc {self.nproc}: process r takes cuda:r; pick the "
                               "GPUs with CUDA_VISIBLE_DEVICES and pass --device cuda")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (STATIC_LR if self.base == "static" else TRANSFORMER_LR)


def fit_device(cfg: TrainConfig) -> str:
    """This process's device: --device resolved, and in a launched GPU process the GPU of its LOCAL_RANK."""
    import os

    import torch.distributed as dist

    from compass.devices import resolve_device

    device = resolve_device(cfg.device)
    if device.startswith("cuda") and dist.is_available() and dist.is_initialized():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def build_trainer(spec: dict, callbacks: list | None = None):
    """The library's trainer over the prepared dataset and base, set up as the config says; (trainer, info)."""
    import datasets
    import torch
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    from compass.devices import precision_name, resolve_precision
    from compass.train.data import NegativeGroupCollator, batch_sampler_factory

    class Trainer(SentenceTransformerTrainer):
        data_collator_class = NegativeGroupCollator  # rows with fewer mined negatives leave their columns empty

        def add_model_card_callback(self, *args, **kw) -> None:
            """compass writes its own card (train/card.py); the library's callback would tokenize the whole dataset
            at start-up for column statistics, and trips on the None of a missing negative."""

        def log(self, logs: dict, *args, **kw) -> None:
            # CAM's share of masked in-batch pairs since the last log, next to the loss (the run report plots it)
            pop = getattr(self.loss, "pop_masked_share", None)
            share = pop() if pop is not None and "loss" in logs else None
            if share is not None:
                logs["masked_share"] = round(share, 5)
            super().log(logs, *args, **kw)

    cfg = TrainConfig(**spec["config"])
    device = fit_device(cfg)
    dtype = resolve_precision(device, cfg.precision)
    dataset = datasets.load_from_disk(spec["dataset"])
    model = SentenceTransformer(spec["base"], device=device)
    info: dict[str, Any] = {"device": device, "precision": precision_name(dtype), "prompts": None,
                            "frozen_parameters": 0, "trainable_parameters": 0, "train_max_seq_length": None}
    hf = transformer_module(model)
    if hf is not None:
        if cfg.freeze_embeddings:
            # 96M of multilingual-e5-small's 118M parameters are its 250k-row word table, and a catalog touches a
            # few thousand rows. Freezing it removes the dense (250k, 384) gradient and AdamW's update of it, the
            # bulk of a CPU step, and keeps the rows of tokens the catalog never shows where the base left them
            # (updated rows drift away from untouched ones: the forgetting this guards against).
            emb = hf.auto_model.get_input_embeddings()
            emb.weight.requires_grad_(False)
            info["frozen_parameters"] = emb.weight.numel()
        if cfg.freeze_layers:
            info["frozen_parameters"] = freeze_lower_layers(hf.auto_model, cfg.freeze_layers)
            info["frozen_layers"] = cfg.freeze_layers
        if cfg.max_seq_length and (model.max_seq_length or 10**9) > cfg.max_seq_length:
            info["saved_max_seq_length"] = model.max_seq_length
            model.max_seq_length = cfg.max_seq_length  # restored before the final save
        info["train_max_seq_length"] = model.max_seq_length
        chunks = cfg.length_chunks if cfg.length_chunks is not None else 0
        if chunks:
            from compass.train.bucketing import enable

            enable(model, chunks)  # padding is most of a CPU forward's work (train/bucketing.py)
        info["length_chunks"] = chunks
    elif cfg.gradient_checkpointing:
        raise CompassError("--gradient-checkpointing needs a transformer base (a static model has no layers)")
    elif cfg.freeze_layers:
        raise CompassError("--freeze-layers needs a transformer base (a static model has no layers)")
    info["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    prompts = training_prompts(model, dataset.column_names) if cfg.prompts else None
    info["prompts"] = prompts
    loss = make_loss(model, cfg, spec["task_ids"], gather=cfg.nproc > 1)
    ckpt_dir = Path(cfg.out) / "checkpoints"
    on_cuda = device.startswith("cuda")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size // cfg.nproc,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        learning_rate=cfg.learning_rate,
        warmup_steps=0.1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=not on_cuda,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        # only when asked: transformers 5.2x renames it (activation_checkpointing) and warns on every use
        **({"gradient_checkpointing": True} if cfg.gradient_checkpointing else {}),
        prompts=prompts,
        batch_sampler=batch_sampler_factory(spec["langs"], cfg.lang_temperature, cfg.batch_dedup,
                                            spec.get("groups"), block=cfg.nproc),
        # gather_across_devices needs equal per-rank batches
        dataloader_drop_last=cfg.nproc > 1,
        ddp_backend=("nccl" if on_cuda else "gloo") if cfg.nproc > 1 or spec.get("launched") else None,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks)
    return trainer, info


def fit(spec: dict, callbacks: list | None = None) -> dict:
    """Phase 2, in each training process: the library's trainer over the prepared dataset and base model.

    Resumes from the newest checkpoint in OUT/checkpoints when there is one (prepare() has checked that it was made
    with this config). ``callbacks``: extra transformers TrainerCallbacks (progress hooks; tests use one to kill a
    run mid-way)."""
    from transformers.trainer_utils import get_last_checkpoint

    trainer, info = build_trainer(spec, callbacks)
    cfg = TrainConfig(**spec["config"])
    ckpt_dir = Path(cfg.out) / "checkpoints"
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    model, loss = trainer.model, trainer.loss
    if isinstance(loss, dict):
        loss = next(iter(loss.values()))
    if trainer.is_world_process_zero():
        if "saved_max_seq_length" in info:
            model.max_seq_length = info["saved_max_seq_length"]
        model.save(cfg.out)
        if cfg.base != "static":  # a transformer: make the folder serve in vLLM exactly as it embeds here
            from compass.train.vllm_serve import serve_command, write_vllm_config

            vllm = write_vllm_config(cfg.out, model)
            info["vllm"] = {"command": serve_command(cfg.out), "problems": vllm.get("problems", [])}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"resumed_from": last, "global_step": trainer.state.global_step,
            "final_loss": losses[-1] if losses else None,
            "train_runtime_s": output.metrics.get("train_runtime"), "loss_config": loss.get_config_dict()
            if hasattr(loss, "get_config_dict") else {}, "loss_class": type(loss).__name__,
            # the loss curve (and CAM's masked share) per logged step, for the run report
            "log_history": [{k: h[k] for k in ("step", "loss", "masked_share", "learning_rate") if k in h}
                            for h in trainer.state.log_history if "loss" in h], **info}


# Fields that do not change what is trained: where it goes, how often it is logged or saved, what is evaluated
# afterwards, and the device (a run started on a CPU may resume on a GPU).
NOT_HASHED = ("out", "eval_tasks", "logging_steps", "save_steps", "keep_checkpoints", "overwrite", "device")
CONFIG_FILE = "compass_config.json"


def config_fields(cfg: TrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_HASHED}


def config_hash(cfg: TrainConfig) -> str:
    import hashlib

    blob = json.dumps(config_fields(cfg), sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def claim_checkpoints(cfg: TrainConfig) -> str | None:
    """Make OUT/checkpoints this config's: refuse checkpoints made with another config (naming the fields that
    differ), or discard them with --overwrite. Returns what happened, for the console (None: a fresh start)."""
    out = Path(cfg.out)
    ckpt, work = out / "checkpoints", out / WORK
    stored_path = ckpt / CONFIG_FILE
    note = None
    if ckpt.is_dir() and any(p.name.startswith("checkpoint-") for p in ckpt.iterdir()):
        stored = json.loads(stored_path.read_text(encoding="utf-8")) if stored_path.exists() else None
        if stored is None or stored.get("hash") != config_hash(cfg):
            mine = config_fields(cfg)
            theirs = (stored or {}).get("fields", {})
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)) if stored else []
            if not cfg.overwrite:
                what = (f"differ in {', '.join(f'{k} ({theirs.get(k)!r} -> {mine.get(k)!r})' for k in diff)}"
                        if stored else "have no stored config (made by an older compass)")
                raise CompassError(f"--out {out}: its checkpoints were made with another config: they {what}; "
                                   "pass --overwrite to discard them and start over, or a new --out")
            note = f"--overwrite: discarded the checkpoints of another config in {ckpt}"
            shutil.rmtree(ckpt)
            shutil.rmtree(work, ignore_errors=True)  # the static base there belongs to the old config too
        else:
            note = f"resuming from the checkpoints in {ckpt} (same config {stored['hash']})"
    ckpt.mkdir(parents=True, exist_ok=True)
    stored_path.write_text(json.dumps({"hash": config_hash(cfg), "fields": config_fields(cfg)}, indent=2,
                                      sort_keys=True, default=str), encoding="utf-8")
    return note


def prepare(cat: Catalog, cfg: TrainConfig, run_id: str, echo=None) -> dict:
    """Phase 1: splits, dataset, base model on disk; returns the spec `fit` runs from. ``echo(line)`` gets what
    the user should read before a long fit (default: the logging module)."""
    from compass.train.data import build_training_data, describe_negatives
    from compass.train.splits import active_policy, assign_splits
    from compass.train.static_base import build_static_model, catalog_texts, read_text_files, tokenizer_notes

    echo = echo or log.warning
    resumed = claim_checkpoints(cfg)
    if resumed:
        echo(resumed)
    split = assign_splits(cat, None, run_id)  # examples that arrived since the last split get theirs first
    data = build_training_data(cat, cfg.langs, cfg.negatives, cfg.num_negatives, missing=cfg.missing_negatives)
    for line in describe_negatives(data):
        echo(line)
    work = Path(cfg.out) / WORK
    work.mkdir(parents=True, exist_ok=True)
    data.dataset.save_to_disk(str(work / "dataset"))
    notes: list[str] = []
    if cfg.base == "static":
        base = str(work / "base")
        if not (work / "base" / "modules.json").exists():  # a resumed run keeps the tokenizer its checkpoints use
            texts = list(catalog_texts(cat)) + list(read_text_files(cfg.tokenizer_texts))
            build_static_model(texts, cfg.embedding_dim, cfg.vocab_size, cfg.seed).save(base)
        notes = tokenizer_notes(base, cfg.vocab_size, set(data.langs), cfg.eval_tasks)
        for line in notes:
            echo(line)
    else:
        base = resolve_model(cfg.base)  # a folder, or a name compass knows (minilm, e5-small, ...)
    runs = [r["run_id"] for r in cat.query(
        "SELECT DISTINCT k.run_id FROM kept_examples k JOIN splits s ON s.example_id = k.id "
        "WHERE s.split = 'train' AND k.run_id IS NOT NULL ORDER BY 1")]
    neg_run = cat.scalar("SELECT run_id FROM negative_sets WHERE set_id = ?", [data.negative_set]) \
        if data.negative_set else None
    policy = active_policy(cat)
    return {
        "config": asdict(cfg), "dataset": str(work / "dataset"), "base": base, "langs": data.langs,
        "task_ids": data.task_ids,
        "lineage": {"train_run": run_id, "example_runs": runs, "negative_set": data.negative_set,
                    "negative_set_run": neg_run, "split_policy": asdict(policy) if policy else None,
                    "catalog": Path(cat.path).name},
        "counts": data.counts, "split": split, "groups": data.groups, "notes": notes,
    }


def train(catalog: str | Path | None, cfg: TrainConfig, echo=None) -> dict:
    """Prepare, fit, evaluate, write the card; returns the run summary. ``echo(line)``: notes for the console.

    Devices: one CPU process fits here; N CPU processes (gloo) or any GPU run that is not the only GPU's fit
    here (N processes with NCCL, process r on cuda:r; --device cuda:N alone) go through ``launch``, since the
    transformers trainer in this process would take cuda:0 and spread over every visible GPU (DataParallel)."""
    from compass.catalog.db import Catalog
    from compass.train.card import write_card
    from compass.train.evaluate import evaluate_model

    out = Path(cfg.out)
    if (out / "modules.json").exists() and not (out / "checkpoints").exists() and not (out / WORK).exists():
        raise CompassError(f"--out {out} already holds a finished model: pass another --out (or delete it)")
    t0 = time.perf_counter()
    with Catalog(catalog) as cat, cat.run("train", asdict(cfg)) as run:
        spec = prepare(cat, cfg, run.id, echo)
        t_prep = time.perf_counter()
        import torch

        from compass.devices import device_index, resolve_device

        device = resolve_device(cfg.device)
        on_cuda = device.startswith("cuda")
        if cfg.nproc > 1 or (on_cuda and (device != "cuda:0" or torch.cuda.device_count() > 1)):
            from compass.train.distributed import launch

            spec["launched"] = True
            result = launch(fit, cfg.nproc, spec, backend="nccl" if on_cuda else "gloo",
                            first_device=device_index(device) or 0)[0]
        else:
            result = fit(spec)
        t_fit = time.perf_counter()
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(out), device=device)
        evaluation = evaluate_model(model, cfg.eval_tasks, cat, "test", langs=cfg.langs)
        summary = {**result, "out": str(out), "counts": spec["counts"], "lineage": spec["lineage"],
                   "base": cfg.base, "macro": evaluation["macro"],
                   "timings_s": {"prepare": round(t_prep - t0, 1), "fit": round(t_fit - t_prep, 1),
                                 "eval": round(time.perf_counter() - t_fit, 1)}}
        write_card(out, cfg, spec, result, evaluation)
        (out / "compass_train.json").write_text(json.dumps(
            {"config": asdict(cfg), "lineage": spec["lineage"], "counts": spec["counts"], "fit": result,
             "evaluation": evaluation}, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
        if not cfg.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        shutil.rmtree(out / WORK, ignore_errors=True)
        run.summary.update({k: v for k, v in summary.items() if k != "lineage"})
    return summary
