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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compass.catalog.db import Catalog
from compass.errors import CompassError
from compass.models import BASELINE_ALIASES, minilm_path

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

    def __post_init__(self) -> None:
        if self.loss not in ("cam", "infonce"):
            raise CompassError(f"--loss {self.loss!r}: use cam or infonce")
        if self.task_policy not in ("default", "none"):
            raise CompassError(f"--task-policy {self.task_policy!r}: use default or none")
        if self.batch_dedup not in ("anchor", "text"):
            raise CompassError(f"--batch-dedup {self.batch_dedup!r}: use anchor or text")
        if self.nproc < 1 or self.batch_size % self.nproc:
            raise CompassError(f"--batch-size {self.batch_size} must be a multiple of --nproc {self.nproc} "
                               "(it is the global batch, split evenly across processes)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise CompassError("give --epochs > 0 or --max-steps > 0")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (STATIC_LR if self.base == "static" else TRANSFORMER_LR)


def task_policy_for(task_ids: dict[str, int], policy: str) -> dict[str, set[str]] | None:
    """'default': a bare category label is a meaningless negative for every anchor that is not a title being
    categorised (a query's softmax should not be spent pushing it away from "Fashion > Shoes")."""
    if policy == "none" or "title2category" not in task_ids:
        return None
    return {t: {"title2category"} for t in task_ids if t != "title2category"}


def make_loss(model, cfg: TrainConfig, task_ids: dict[str, int], gather: bool):
    if cfg.loss == "infonce":
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MultipleNegativesRankingLoss,
        )

        kw: dict[str, Any] = {"scale": 1.0 / cfg.temperature, "gather_across_devices": gather}
        if cfg.symmetric:
            kw.update(directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
        if cfg.cached:
            return CachedMultipleNegativesRankingLoss(model, mini_batch_size=cfg.mini_batch_size, **kw)
        return MultipleNegativesRankingLoss(model, **kw)
    from compass.train.cam_loss import CachedCAMLoss, CAMLoss

    kw = {"temperature": cfg.temperature, "symmetric": cfg.symmetric, "gather_across_devices": gather,
          "task_policy": task_policy_for(task_ids, cfg.task_policy), "task_ids": task_ids}
    if cfg.cached:
        return CachedCAMLoss(model, mini_batch_size=cfg.mini_batch_size, **kw)
    return CAMLoss(model, **kw)


def fit(spec: dict, callbacks: list | None = None) -> dict:
    """Phase 2, in each training process: the library's trainer over the prepared dataset and base model.

    Resumes from the newest checkpoint in OUT/checkpoints when there is one. ``callbacks``: extra
    transformers TrainerCallbacks (progress hooks; tests use one to kill a run mid-way)."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from transformers.trainer_utils import get_last_checkpoint

    from compass.train.data import batch_sampler_factory

    cfg = TrainConfig(**spec["config"])
    dataset = datasets.load_from_disk(spec["dataset"])
    model = SentenceTransformer(spec["base"], device="cpu")
    loss = make_loss(model, cfg, spec["task_ids"], gather=cfg.nproc > 1)
    ckpt_dir = Path(cfg.out) / "checkpoints"
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
        use_cpu=True,
        batch_sampler=batch_sampler_factory(spec["langs"], cfg.lang_temperature, cfg.batch_dedup),
        # gather_across_devices needs equal per-rank batches
        dataloader_drop_last=cfg.nproc > 1,
        ddp_backend="gloo" if cfg.nproc > 1 else None,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss,
                                         callbacks=callbacks)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    output = trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        model.save(cfg.out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"resumed_from": last, "global_step": trainer.state.global_step, "final_loss": losses[-1] if losses else None,
            "train_runtime_s": output.metrics.get("train_runtime"), "loss_config": loss.get_config_dict()
            if hasattr(loss, "get_config_dict") else {}, "loss_class": type(loss).__name__}


def prepare(cat: Catalog, cfg: TrainConfig, run_id: str) -> dict:
    """Phase 1: splits, dataset, base model on disk; returns the spec `fit` runs from."""
    from compass.train.data import build_training_data
    from compass.train.splits import active_policy, assign_splits
    from compass.train.static_base import build_static_model, catalog_texts, read_text_files

    split = assign_splits(cat, None, run_id)  # examples that arrived since the last split get theirs first
    data = build_training_data(cat, cfg.langs, cfg.negatives, cfg.num_negatives)
    work = Path(cfg.out) / WORK
    work.mkdir(parents=True, exist_ok=True)
    data.dataset.save_to_disk(str(work / "dataset"))
    base = cfg.base
    if base.lower() in BASELINE_ALIASES:
        base = str(minilm_path())
    if cfg.base == "static":
        base = str(work / "base")
        if not (work / "base" / "modules.json").exists():  # a resumed run keeps the tokenizer its checkpoints use
            texts = list(catalog_texts(cat)) + list(read_text_files(cfg.tokenizer_texts))
            build_static_model(texts, cfg.embedding_dim, cfg.vocab_size, cfg.seed).save(base)
    elif not Path(base).exists():
        raise CompassError(f"--base {cfg.base}: not a model folder (pass 'static' or a sentence-transformers "
                           "model directory; no downloads happen here)")
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
        "counts": data.counts, "split": split,
    }


def train(catalog: str | Path | None, cfg: TrainConfig) -> dict:
    """Prepare, fit, evaluate, write the card; returns the run summary."""
    from compass.train.card import write_card
    from compass.train.evaluate import evaluate_model

    out = Path(cfg.out)
    if (out / "modules.json").exists() and not (out / "checkpoints").exists() and not (out / WORK).exists():
        raise CompassError(f"--out {out} already holds a finished model: pass another --out (or delete it)")
    t0 = time.perf_counter()
    with Catalog(catalog) as cat, cat.run("train", asdict(cfg)) as run:
        spec = prepare(cat, cfg, run.id)
        t_prep = time.perf_counter()
        if cfg.nproc > 1:
            from compass.train.distributed import launch

            result = launch(fit, cfg.nproc, spec)[0]
        else:
            result = fit(spec)
        t_fit = time.perf_counter()
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(out), device="cpu")
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
