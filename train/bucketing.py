"""Length-sorted chunks for a transformer's training forward on CPU: the compute of padding goes away.

The library pads every text of a batch to its longest one, and merges the columns of a batch into one forward
(anchors, positives, negatives), so a 10-token query pads to the 85 tokens of the longest description in the batch.
On a GPU the padded positions cost little next to kernel efficiency; on 2 CPU cores they are most of the work (the
demo catalog: ~4x the real tokens). ``SentenceTransformer.encode`` sorts texts by length for the same reason; this
does it inside a training forward: rows sorted by length, cut into chunks of ``chunk`` rows, each chunk trimmed to
its own longest row and embedded, the sentence embeddings put back in the original order. With the attention mask
and mean pooling, a row's embedding does not depend on its padding, so the loss and gradients are those of the
padded forward up to float rounding (tests/test_train_options.py checks it); autograd flows through the chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OUT_KEY = "sentence_embedding"


def chunked_forward(forward: Callable[[dict], dict], chunk: int) -> Callable[[dict], dict]:
    """Wrap a SentenceTransformer's forward(features) -> features; returns only what is row-aligned across chunks
    (the sentence embedding), which is all a contrastive loss reads."""

    def run(features: dict[str, Any], *args, **kwargs) -> dict[str, Any]:
        mask = features.get("attention_mask")
        if not torch.is_tensor(mask) or mask.dim() != 2 or mask.size(0) <= chunk:
            return forward(features, *args, **kwargs)
        rows, width = mask.shape
        lengths = mask.sum(dim=1)  # (B,)
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,)
        outs, index = [], []
        for begin in range(0, rows, chunk):
            idx = order[begin:begin + chunk]
            keep = int(lengths[idx].max())
            part = {}
            for k, v in features.items():
                if torch.is_tensor(v) and v.dim() >= 1 and v.size(0) == rows:
                    v = v[idx]
                    if v.dim() == 2 and v.size(1) == width:  # (n, L) token-aligned: ids, mask, type ids
                        v = v[:, :keep]
                part[k] = v
            outs.append(forward(part, *args, **kwargs)[OUT_KEY])  # (n, D)
            index.append(idx)
        emb = torch.cat(outs)  # (B, D) in sorted order
        inverse = torch.empty_like(order)
        inverse[torch.cat(index)] = torch.arange(rows, device=order.device)
        return {**{k: v for k, v in features.items() if not torch.is_tensor(v)}, OUT_KEY: emb[inverse]}

    return run


def enable(model, chunk: int) -> None:
    """Make `model` (a SentenceTransformer) embed training batches in length-sorted chunks of `chunk` rows."""
    if chunk and chunk > 0:
        model.forward = chunked_forward(model.forward, chunk)
