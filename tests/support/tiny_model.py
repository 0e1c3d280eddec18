"""Build a tiny random-weight Llama chat model that vLLM runs on CPU: `python tiny_model.py OUT_DIR`.

Its text is noise, but with structured output (JSON schema guided decoding) every answer is schema-valid
JSON, which is all the generation tests need. Run it with the vLLM venv's python so the saved config matches
the transformers version vLLM loads it with. Deterministic: same files for the same code.

Shape facts for vLLM's CPU attention: head_dim 64 works (16 does not); hidden 128 with 2 heads gives that.
The byte-level BPE tokenizer is trained by `tokenizers` on the prompt templates (all nine scripts), so
prompts tokenize compactly and every byte is reachable (grammar-guided decoding needs that).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def corpus() -> list[str]:
    # Newlines and tabs become spaces: with no control character in the vocabulary, noise answers cannot put
    # raw control characters inside JSON strings (invalid JSON that guided decoding still allows).
    texts = [" ".join(p.read_text(encoding="utf-8").split())
             for p in sorted((REPO / "prompts" / "templates").rglob("*.yaml"))]
    return texts * 3 + ['{"queries": ["', '"]}', '{"question": "', '{"anchor": "', '", "positive": "']


def _control_chars() -> set[str]:
    """The byte-level characters of bytes 0-31 and 127 (GPT-2's byte -> unicode table)."""
    from tokenizers import pre_tokenizers

    return {pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(chr(b))[0][0]
            for b in list(range(32)) + [127]}


def build(out: Path, vocab_size: int = 4000, max_positions: int = 2048) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=[c for c in pre_tokenizers.ByteLevel.alphabet()
                                                    if c not in _control_chars()])
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=max_positions, bos_token_id=fast.bos_token_id,
                      eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
                      torch_dtype="float32")
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": fast.bos_token_id,
                                                            "eos_token_id": fast.eos_token_id}))
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
