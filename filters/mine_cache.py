"""The encoder for mining: load a sentence-transformers model offline, fingerprint it, cache its embeddings.

The cache lives in the catalog (`embedding_cache`, FLOAT[] per text; see migration 0030 for why not a side
file), keyed by (model fingerprint, text hash). The fingerprint hashes the weights, tokenizer and module
stack, not the path, so a model copied elsewhere reuses its rows and a retrained one at the same path does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from compass.catalog.db import Catalog, registered
from compass.errors import CompassError
from compass.ids import text_hash

ENCODE_CHUNK = 4096  # texts encoded and committed per transaction: a killed run keeps what it encoded


def load_encoder(model: str, device: str = "cpu"):
    """SentenceTransformer(model) on `device`, offline; a clear error when it cannot be found."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CompassError(f"--device {device}: no CUDA device here (torch {torch.__version__}); use --device cpu")
    elif device != "cpu":
        raise CompassError(f"--device {device!r}: use cpu or cuda")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from compass.models import resolve_model

    model = resolve_model(model)  # minilm, e5-small (converted on first use), a folder, or a hub id

    try:
        return SentenceTransformer(model, device=device)
    except Exception as e:  # the library raises OSError / ValueError / HF errors for a missing or bad folder
        hint = "" if Path(model).exists() else " (no such folder; models are not downloaded: pass a local path)"
        raise CompassError(f"--model {model}: cannot load a sentence-transformers model{hint}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def model_fingerprint(model) -> str:
    """Hash of what decides the embeddings: module stack and configs, tokenizer, every weight tensor."""
    import torch

    h = hashlib.sha256()
    h.update(repr(model).encode())                                   # modules, pooling, normalisation, seq len
    h.update(str(getattr(model, "max_seq_length", None)).encode())
    tok = getattr(model, "tokenizer", None)
    backend = getattr(tok, "backend_tokenizer", tok)                 # HF fast tokenizer or tokenizers.Tokenizer
    if hasattr(backend, "to_str"):
        h.update(backend.to_str().encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def register_model(cat: Catalog, fp: str, name: str, dim: int, run_id: str | None) -> None:
    with cat.transaction() as con:
        con.execute("INSERT INTO encoder_models (model_fp, model, dim, run_id) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING", [fp, name, dim, run_id])


def _hashes_table(texts: list[str]) -> pa.Table:
    return pa.table({"pos": pa.array(range(len(texts)), pa.int64()),
                     "h": pa.array([text_hash(t) for t in texts], pa.string())})


def missing_texts(cat: Catalog, fp: str, texts: list[str]) -> list[str]:
    """The distinct texts with no cached embedding for this model."""
    uniq = list(dict.fromkeys(texts))
    with registered(cat.con, "_mine_q", _hashes_table(uniq)):
        rows = cat.con.execute("SELECT q.pos FROM _mine_q q WHERE NOT EXISTS (SELECT 1 FROM embedding_cache c "
                               "WHERE c.model_fp = ? AND c.text_hash = q.h) ORDER BY q.pos", [fp]).fetchall()
    return [uniq[r[0]] for r in rows]


def encode_missing(cat: Catalog, model, fp: str, texts: list[str], batch_size: int, run_id: str | None,
                   progress: bool = True) -> int:
    """Encode the texts missing from the cache and store them, ENCODE_CHUNK per transaction; returns how many."""
    todo = missing_texts(cat, fp, texts)
    for start in range(0, len(todo), ENCODE_CHUNK):
        chunk = todo[start:start + ENCODE_CHUNK]
        emb = model.encode(chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=progress)
        emb = np.asarray(emb, dtype=np.float32)                       # (len(chunk), dim)
        vec = pa.ListArray.from_arrays(pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32)),
                                       pa.array(emb.reshape(-1)))
        tbl = pa.table({"h": [text_hash(t) for t in chunk], "vec": vec})
        with cat.transaction() as con, registered(con, "_mine_new", tbl):
            con.execute("INSERT INTO embedding_cache (model_fp, text_hash, vec, run_id) "
                        "SELECT ?, h, vec, ? FROM _mine_new ON CONFLICT DO NOTHING", [fp, run_id])
    return len(todo)


def load_embeddings(cat: Catalog, fp: str, texts: list[str], dim: int) -> np.ndarray:
    """(len(texts), dim) float32 embeddings from the cache, in the order of `texts` (all must be cached)."""
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    with registered(cat.con, "_mine_q", _hashes_table(texts)):
        tbl = cat.con.execute("SELECT q.pos, c.vec FROM _mine_q q JOIN embedding_cache c ON c.text_hash = q.h "
                              "AND c.model_fp = ? ORDER BY q.pos", [fp]).to_arrow_table()
    if tbl.num_rows != len(texts):
        raise CompassError(f"embedding cache is missing {len(texts) - tbl.num_rows} texts for model {fp}: "
                           "rerun `compass mine` (it encodes what is missing)")
    flat = tbl.column("vec").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, dtype=np.float32).reshape(len(texts), dim)   # a writable copy torch can share

