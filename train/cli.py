"""`compass split`, `compass train`, `compass eval`: thin commands over compass.train's Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from compass.catalog.db import Catalog
from compass.cli_common import CatalogOpt, LangsOpt, console, print_table
from compass.langs import parse_langs


def split(
    test: Annotated[Optional[float], typer.Option(help="Share of groups held out for test [default: the catalog's "
                                                       "policy, else 0.05].")] = None,
    dev: Annotated[Optional[float], typer.Option(help="Share of groups held out for dev [default: as test, 0.05].")]
    = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the group hash [default: the catalog's, else 0].")]
    = None,
    reset: Annotated[bool, typer.Option(help="Drop every stored split and redo all with these values.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Split examples into train/dev/test by product, item and translation group (incremental: only new
    examples get a split, by the same rule)."""
    from compass.train.splits import GROUPING, SplitPolicy, active_policy, assign_splits, split_sizes

    with Catalog(catalog) as cat, cat.run("split", {"test": test, "dev": dev, "seed": seed, "reset": reset}) as run:
        current = active_policy(cat) or SplitPolicy()
        # A catalog keeps the grouping it was split with; --reset redoes every split, so it takes the current one.
        policy = SplitPolicy(test=current.test if test is None else test, dev=current.dev if dev is None else dev,
                             seed=current.seed if seed is None else seed,
                             grouping=GROUPING if reset else current.grouping)
        res = assign_splits(cat, policy, run.id, reset=reset)
        run.summary.update(res)
        sizes = split_sizes(cat)
    console.print(f"split: {res['added']} examples newly assigned (policy {res['policy_hash']}); "
                  f"train {res['train']}, dev {res['dev']}, test {res['test']}")
    print_table(sizes, title="kept examples per language and split")


def train(
    out: Annotated[Path, typer.Option(help="Model folder to write (sentence-transformers layout).")],
    base: Annotated[str, typer.Option(help="'static' (StaticEmbedding, tokenizer trained on the catalog) or a "
                                           "sentence-transformers model directory.")] = "static",
    loss: Annotated[str, typer.Option(help="cam (class-aware masking) | infonce (MultipleNegativesRankingLoss).")]
    = "cam",
    batch_size: Annotated[int, typer.Option(help="Global batch size (all processes together).")] = 64,
    cached: Annotated[bool, typer.Option(help="GradCache variant: batches beyond memory (not for static).")] = False,
    mini_batch_size: Annotated[int, typer.Option(help="--cached: rows per embedding chunk.")] = 32,
    epochs: Annotated[float, typer.Option(help="Epochs (ignored when --max-steps is given).")] = 1.0,
    max_steps: Annotated[int, typer.Option(help="Stop after this many optimizer steps.")] = -1,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate [default: 0.2 static, 2e-5 transformer].")]
    = None,
    temperature: Annotated[float, typer.Option(help="Softmax temperature (scale = 1 / temperature).")] = 0.05,
    symmetric: Annotated[bool, typer.Option(help="Add the positive -> anchor direction.")] = False,
    task_policy: Annotated[str, typer.Option(help="default: category labels are never negatives of free-text "
                                                  "anchors; none: mask by class and text only.")] = "default",
    langs: LangsOpt = None,
    negatives: Annotated[str, typer.Option(help="Negative set id, 'latest' or 'none'.")] = "latest",
    num_negatives: Annotated[int, typer.Option(help="Hard negatives per example (see --missing-negatives).")]
    = 1,
    missing_negatives: Annotated[str, typer.Option(
        help="Rows with fewer mined negatives: pairs = train with what they have (in-batch negatives only when "
             "none), in batches of their own; drop = leave them out.")] = "pairs",
    lang_temperature: Annotated[float, typer.Option(help="Language sampling p ~ n^(1/T); 1 = as in the data.")]
    = 3.0,
    batch_dedup: Annotated[str, typer.Option(
        help="What must be unique in a batch. anchor: no anchor (so no identical pair) twice, but positives may "
             "repeat (titles of one category share its label, several listings of an item share a title): the "
             "false negatives CAM masks by class and text, kept so batches keep the data's task mix; with --loss "
             "infonce they are false negatives. text: no text of any column twice (CAM then has nothing to mask "
             "by text).")] = "anchor",
    seed: Annotated[int, typer.Option(help="Seed for initialisation and sampling.")] = 0,
    nproc: Annotated[int, typer.Option(help="Data-parallel processes (torch.distributed: gloo on CPU, NCCL on GPUs, "
                                            "process r on cuda:r).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA when present) | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 (mixed "
                                                "precision: weights stay fp32).")] = "auto",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward (transformer "
                                                              "bases): less memory, ~30% slower.")] = False,
    prompts: Annotated[bool, typer.Option(help="Anchors get the base's query prompt, positives and negatives its "
                                               "document prompt (e5: 'query: ' / 'passage: '); none if it has none.")]
    = True,
    freeze_embeddings: Annotated[bool, typer.Option(help="Transformer bases: do not train the word-embedding "
                                                         "table (most of a multilingual model's parameters).")]
    = True,
    freeze_layers: Annotated[int, typer.Option(help="Transformer bases: also freeze the embedding block and the "
                                                    "lowest N transformer layers (train only the top; less "
                                                    "forgetting, shorter backward).")] = 0,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Transformer bases: truncate training texts to this "
                                                               "many tokens (the saved model keeps its own limit).")]
    = 128,
    length_chunks: Annotated[Optional[int], typer.Option(
        help="Transformer bases: embed each batch in length-sorted chunks of N rows, so short texts are not padded "
             "to the longest (same loss; [default: off; measured slower on 2 CPU cores, see README]).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Discard checkpoints in --out made with another config.")] = False,
    embedding_dim: Annotated[int, typer.Option(help="--base static: embedding size.")] = 256,
    vocab_size: Annotated[int, typer.Option(help="--base static: tokenizer vocabulary size.")] = 24000,
    tokenizer_texts: Annotated[Optional[list[Path]], typer.Option(
        help="--base static: extra unlabeled text (.txt lines or .jsonl text fields, or folders of them) for the "
             "tokenizer; repeatable.")] = None,
    eval_tasks: Annotated[Optional[Path], typer.Option(help="Task folder to evaluate into the model card.")] = None,
    save_steps: Annotated[int, typer.Option(help="Checkpoint every N steps (resume: rerun the same command).")]
    = 200,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep OUT/checkpoints after a finished run.")] = False,
    catalog: CatalogOpt = None,
) -> None:
    """Train an embedding model on the catalog's train split (splitting new examples first)."""
    from compass.train.evaluate import result_tables
    from compass.train.trainer import TrainConfig
    from compass.train.trainer import train as run_train

    cfg = TrainConfig(
        base=base, out=str(out), loss=loss, batch_size=batch_size, cached=cached, mini_batch_size=mini_batch_size,
        epochs=epochs, max_steps=max_steps, lr=lr, temperature=temperature, symmetric=symmetric,
        task_policy=task_policy, langs=parse_langs(langs), negatives=negatives, num_negatives=num_negatives,
        lang_temperature=lang_temperature, batch_dedup=batch_dedup, seed=seed, nproc=nproc,
        embedding_dim=embedding_dim, vocab_size=vocab_size, tokenizer_texts=[str(p) for p in tokenizer_texts or []],
        eval_tasks=str(eval_tasks) if eval_tasks else None, save_steps=save_steps, keep_checkpoints=keep_checkpoints,
        device=device, precision=precision, gradient_checkpointing=gradient_checkpointing, prompts=prompts,
        freeze_embeddings=freeze_embeddings, freeze_layers=freeze_layers, max_seq_length=max_seq_length,
        missing_negatives=missing_negatives, length_chunks=length_chunks,
        overwrite=overwrite)
    res = run_train(catalog, cfg, echo=lambda line: console.print(f"train: {line}", markup=False, highlight=False))
    console.print(f"model written to {out} ({res['global_step']} steps on {res.get('device')} "
                  f"{res.get('precision')}, final loss {res['final_loss']}, timings {res['timings_s']})")
    import json

    evaluation = json.loads((out / "compass_train.json").read_text(encoding="utf-8"))["evaluation"]
    tasks, per_lang = result_tables(evaluation)
    print_table(tasks, title="evaluation (x100)")
    print_table(per_lang, title="per-language macro (x100)")


def eval_(
    model: Annotated[str, typer.Argument(help="A sentence-transformers model folder, or a model name: minilm, "
                                              "e5-small.")],
    tasks: Annotated[Optional[Path], typer.Option(help="Folder of task folders (BEIR retrieval or "
                                                       "train/test.jsonl classification).")] = None,
    catalog_split: Annotated[Optional[str], typer.Option(help="Also score this catalog split (test | dev; 'none' to "
                                                              "skip): its queries ranked against every product title "
                                                              "of their language.")] = "test",
    langs: LangsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (auto: CUDA when present).")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, fp32 on CPU).")]
    = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full result as JSON here.")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Evaluate a model: retrieval nDCG@10/MRR@10/Recall@100, classification accuracy/macro-F1; retrieval and
    classification macros apart, per language."""
    import json

    from compass.catalog.db import catalog_path
    from compass.train.evaluate import evaluate_model, result_tables

    split_name = None if catalog_split in (None, "", "none") else catalog_split
    use_catalog = split_name is not None and (catalog is not None or catalog_path(None).exists())
    res = evaluate_model(model, tasks, catalog_path(catalog) if use_catalog else None, split_name,
                         batch_size=batch_size, langs=parse_langs(langs), device=device, precision=precision)
    task_rows, lang_rows = result_tables(res)
    print_table(task_rows, title=f"{model}: tasks (x100; main = nDCG@10 for retrieval, accuracy for classification)")
    print_table(lang_rows, title="macro per language (x100): retrieval, classification, all tasks")
    if json_out:
        json_out.write_text(json.dumps(res, ensure_ascii=False, indent=2), encoding="utf-8")
        console.print(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command()(split)
    app.command()(train)
    app.command("eval")(eval_)
