"""What the trainer does to a base model before training: prompts per column, and freezing lower layers."""

from __future__ import annotations

from compass.errors import CompassError


def training_prompts(model, columns: list[str]) -> dict[str, str] | None:
    """Per-column prompts for the trainer: the model's query prompt for the anchor, its document prompt (the first
    of document / passage / corpus, as ``encode_document`` picks) for the positive and negatives; None when the
    model has neither (it then trains on the bare texts, as before)."""
    prompts = getattr(model, "prompts", None) or {}
    query = prompts.get("query") or None
    doc = next((prompts[n] for n in ("document", "passage", "corpus") if prompts.get(n)), None)
    if not query and not doc:
        return None
    out = {c: (query if c == "anchor" else doc) for c in columns if c != "label"}
    return {c: p for c, p in out.items() if p}


def transformer_module(model):
    """The model's first module when it is a transformers-backed one (None for StaticEmbedding)."""
    first = model[0]
    return first if hasattr(first, "auto_model") else None


def encoder_layers(auto_model) -> list:
    """The transformer blocks, bottom first, of a BERT/XLM-R-style (encoder.layer) or decoder-style (layers) model."""
    for path in (("encoder", "layer"), ("layers",), ("model", "layers"), ("transformer", "layer")):
        obj = auto_model
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None:
            return list(obj)
    raise CompassError(f"--freeze-layers: cannot find the transformer layers of {type(auto_model).__name__} "
                       "(looked for encoder.layer and layers); train without --freeze-layers")


def freeze_lower_layers(auto_model, n: int) -> int:
    """Freeze the embedding block (word, position, type, LayerNorm) and the lowest n blocks; returns the frozen count.

    Fine-tuning only the top of an encoder keeps the lower layers' general features exactly as pretrained (a
    standard remedy for forgetting), and backward stops at the first trainable block: with 8 of e5-small's 12
    blocks frozen, a step's backward covers 4 blocks instead of 12.
    """
    layers = encoder_layers(auto_model)
    if n > len(layers):
        raise CompassError(f"--freeze-layers {n}: the base has only {len(layers)} layers; give at most {len(layers)}")
    frozen = [auto_model.get_input_embeddings()]
    emb_block = getattr(auto_model, "embeddings", None)
    if emb_block is not None:
        frozen.append(emb_block)
    frozen += layers[:n]
    seen: set[int] = set()
    for module in frozen:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                p.requires_grad_(False)
    return sum(p.numel() for p in auto_model.parameters() if not p.requires_grad)
