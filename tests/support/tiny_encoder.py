"""A tiny BERT sentence-transformers model with e5-style prompts, trained a few steps: what vLLM is asked to serve.

Shape facts for vLLM's CPU attention: head_dim 64 (hidden 128, 2 heads). 64 positions with a 48-token limit, so a
server that ignored the limit would embed tokens sentence-transformers cuts off (the parity test checks that it
does not). The WordPiece vocabulary is learnt from the gate texts (nine languages) and the prompt words.
"""

from __future__ import annotations

from pathlib import Path

PROMPTS = {"query": "query: ", "document": "passage: "}
MAX_SEQ_LENGTH = 48


def build(path: Path, texts: list[str], hidden: int = 128, normalize: bool = True, pooling: str = "mean",
          include_prompt: bool = True, prompts: dict | None = PROMPTS, vocab_size: int = 1500):
    """Save a random-weight model at `path`; returns the loaded SentenceTransformer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(texts + ["query: passage:"] * 5, trainers.WordPieceTrainer(vocab_size=vocab_size,
                                                                                       special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    hf = path.parent / (path.name + "-hf")
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(hf)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64)
              ).save_pretrained(hf)
    modules = [Transformer(str(hf)), Pooling(hidden, pooling, include_prompt=include_prompt)]
    model = SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu",
                                prompts=prompts)
    model.max_seq_length = MAX_SEQ_LENGTH
    model.save(str(path))
    return model


def train_few_steps(model, anchors: list[str], positives: list[str], steps: int = 3):
    """A few in-batch-negatives steps (query prompt on anchors, passage prompt on positives), so the weights are a
    trained model's rather than an initialisation."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(0)
    loss = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        features = [model.tokenize([PROMPTS["query"] + a for a in anchors]),
                    model.tokenize([PROMPTS["document"] + p for p in positives])]
        value = loss(features, None)
        opt.zero_grad()
        value.backward()
        opt.step()
    model.eval()
    return model
