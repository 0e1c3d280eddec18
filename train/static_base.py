"""`--base static`: a StaticEmbedding model whose tokenizer is trained on the catalog's own texts.

General-purpose English vocabularies turn Thai, Lao, Khmer and Burmese into [UNK]. A Unigram tokenizer trained
with `tokenizers` on the catalog (SentencePiece-style: Metaspace keeps spaces as a symbol and does not need them,
so a Thai phrase with no spaces is one "word" that Unigram cuts into learned sub-pieces of at most 16 chars) gives
every script real pieces. StaticEmbedding (an EmbeddingBag mean over token vectors) then trains in minutes on CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from compass.catalog.db import Catalog
from compass.errors import CompassError

UNK = "[UNK]"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 24000):
    """A Unigram tokenizer (NFKC + lowercase, Metaspace, punctuation and digit runs split) trained on texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=False)])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[UNK], unk_token=UNK,
                                      max_piece_length=16, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    # The Unigram trainer is not deterministic (piece scores wobble in the 3rd decimal, so id order changes from
    # run to run), and ids decide which random vector a piece starts from. Re-number pieces canonically
    # ([UNK] first, then by text) with scores rounded, so the same texts give the same tokenizer and, with the same
    # seed, the same initial model: a CAM vs InfoNCE ablation then differs in the loss only.
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    pieces = [(UNK, 0.0)] + sorted((p, round(sc, 3)) for p, sc in vocab if p != UNK)
    tok.model = models.Unigram(pieces, unk_id=0, byte_fallback=False)
    return tok


def read_text_files(paths: Iterable[str | Path]) -> Iterator[str]:
    """Unlabeled text for the tokenizer: .jsonl rows (their text / title / anchor / positive fields) or plain
    lines. Each path may be a folder, read recursively (e.g. a folder of task files)."""
    for p in map(Path, paths):
        if not p.exists():
            raise CompassError(f"--tokenizer-texts {p}: no such file or folder")
        files = sorted(f for f in p.rglob("*") if f.suffix in (".jsonl", ".txt")) if p.is_dir() else [p]
        for f in files:
            with f.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    if f.suffix != ".jsonl":
                        yield line
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise CompassError(f"{f}:{n}: not JSON ({e.msg}): fix the line or pass a .txt file") from None
                    for key in ("text", "title", "anchor", "positive"):
                        if isinstance(row, dict) and isinstance(row.get(key), str) and row[key]:
                            yield row[key]


def catalog_texts(cat: Catalog, split: str = "train") -> Iterator[str]:
    """Anchors and positives of the kept examples of one split (the held-out side never shapes the vocabulary)."""
    cur = cat.con.execute(
        "SELECT k.anchor, k.positive FROM kept_examples k JOIN splits s ON s.example_id = k.id WHERE s.split = ?",
        [split])
    while rows := cur.fetchmany(10000):
        for a, p in rows:
            yield a
            yield p


def build_static_model(texts: Iterable[str], embedding_dim: int = 256, vocab_size: int = 24000, seed: int = 0):
    """A fresh SentenceTransformer([StaticEmbedding]) over a tokenizer trained on texts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    tok = train_tokenizer(texts, vocab_size)
    torch.manual_seed(seed)  # the random initial table is part of the experiment: same seed, same start
    module = StaticEmbedding(tok, embedding_dim=embedding_dim)
    return SentenceTransformer(modules=[module], device="cpu")


UNK_WARN_SHARE = 0.10  # a language the corpus covered has well under 1% [UNK] pieces; an unseen script is ~100%


def _task_texts(task, limit: int = 200) -> list[str]:
    """Up to `limit` texts of an eval task (queries and documents, or classification texts)."""
    from compass.jsonl import iter_jsonl

    files = ["queries.jsonl", "corpus.jsonl"] if task.kind == "retrieval" else ["test.jsonl"]
    texts: list[str] = []
    for name in files:
        for n, (_, row) in enumerate(iter_jsonl(task.path / name, ("text",))):
            if n >= limit // len(files):
                break
            texts.append(str(row["text"]))
    return texts


def tokenizer_notes(base: str | Path, vocab_size: int, train_langs: set[str], eval_tasks: str | None) -> list[str]:
    """Warnings about a static base's catalog-learnt tokenizer: --vocab-size not reached, and eval languages that
    its corpus lacked (measured: the share of [UNK] pieces on the task's texts, since an unseen script is all
    [UNK] and the model then embeds every text of it alike)."""
    from tokenizers import Tokenizer

    paths = sorted(Path(base).rglob("tokenizer.json"))
    if not paths:
        return []
    tok = Tokenizer.from_file(str(paths[0]))
    notes = []
    got = tok.get_vocab_size()
    if got < vocab_size:
        notes.append(f"tokenizer: {got} pieces learnt, fewer than --vocab-size {vocab_size}: the training texts hold "
                     "no more distinct pieces (add --tokenizer-texts for a larger vocabulary)")
    if not eval_tasks:
        return notes
    from compass.train.evaluate import discover_tasks

    unk = tok.token_to_id(UNK)
    for task in discover_tasks(eval_tasks):
        texts = _task_texts(task)
        ids = [i for enc in tok.encode_batch(texts) for i in enc.ids] if texts else []
        share = sum(i == unk for i in ids) / len(ids) if ids else 0.0
        if share > UNK_WARN_SHARE:
            why = ("the catalog has no training examples in it" if task.lang not in train_langs
                   else "the tokenizer corpus covers it poorly")
            notes.append(f"tokenizer: eval task {task.name} ({task.lang}): {share:.0%} of its pieces are [UNK]; "
                         f"{why}: add {task.lang} text with --tokenizer-texts (e.g. the task folder) or drop the task")
    return notes
