"""The encoder for mining: load a sentence-transformers model offline, fingerprint it, cache its embeddings.

The cache lives in the catalog (`embedding_cache`, FLOAT[] per text; see migration 0030 for why not a side
file), keyed by (encoder key, text hash). The fingerprint hashes the weights, tokenizer and module stack, not
the path, so a model copied elsewhere reuses its rows and a retrained one at the same path does not.

Anchors are encoded as queries (`encode_query`) and candidates as documents (`encode_document`). A model with
query/document prompts (e5: "query: " / "passage: ") embeds the same text differently in the two roles, so
the encoder key is the fingerprint plus a hash of the prompt the role applies (`role_key`); a model without
prompts has one key, the bare fingerprint, for both roles (the rows it cached before prompts existed stay valid).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
import contextlib
from typing import Iterator

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
        # without the truncation / padding state, which the fast tokenizer sets on its first encode call: the
        # same model must keep its fingerprint before and after encoding
        cfg = json.loads(backend.to_str())
        cfg.pop("truncation", None)
        cfg.pop("padding", None)
        h.update(json.dumps(cfg, sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


ROLES = ("query", "document")


def role_prompt(model, role: str) -> str:
    """The prompt sentence-transformers' encode_query / encode_document prepend for this model ('' for none).

    Mirrors their choice: the "query" prompt for queries; the first of "document", "passage", "corpus" for
    documents; else the model's default prompt.
    """
    prompts = getattr(model, "prompts", None) or {}
    names = ("query",) if role == "query" else ("document", "passage", "corpus")
    for name in names:
        if name in prompts:
            return prompts[name] or ""
    default = getattr(model, "default_prompt_name", None)
    return (prompts.get(default) or "") if default else ""


def role_key(fp: str, model, role: str) -> str:
    """Cache key of one encoding role: the fingerprint, plus the prompt's hash when the role applies one."""
    prompt = role_prompt(model, role)
    return fp if not prompt else f"{fp}/{hashlib.sha256(prompt.encode()).hexdigest()[:8]}"


def encode_role(model, texts: list[str], role: str, batch_size: int, progress: bool) -> np.ndarray:
    """(len(texts), d) float32 unit vectors, encoded as queries or documents (plain encode for older models)."""
    fn = getattr(model, "encode_query" if role == "query" else "encode_document", None)
    kw = dict(batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=progress)
    emb = fn(texts, **kw) if fn is not None else model.encode(texts, **kw)
    return np.asarray(emb, dtype=np.float32)


def register_model(cat: Catalog, fp: str, name: str, dim: int, run_id: str | None, model=None) -> dict[str, str]:
    """Record the model and its role keys; returns {role: cache key}."""
    keys = {r: role_key(fp, model, r) if model is not None else fp for r in ROLES}
    with cat.transaction() as con:
        for role, key in keys.items():
            label = name if key == fp else f"{name} ({role}: {role_prompt(model, role)!r})"
            con.execute("INSERT INTO encoder_models (model_fp, model, dim, run_id) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", [key, label, dim, run_id])
    return keys


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
                   progress: bool = True, role: str = "document") -> int:
    """Encode (as `role`) the texts missing from the cache under key `fp`, ENCODE_CHUNK per transaction."""
    return store_encoded(cat, model, fp, missing_texts(cat, fp, texts), batch_size, run_id, progress, role)


def store_encoded(cat: Catalog, model, fp: str, todo: list[str], batch_size: int, run_id: str | None,
                  progress: bool = True, role: str = "document") -> int:
    for start in range(0, len(todo), ENCODE_CHUNK):
        chunk = todo[start:start + ENCODE_CHUNK]
        emb = encode_role(model, chunk, role, batch_size, progress)    # (len(chunk), dim)
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



def stream_embeddings(cat: Catalog, fp: str, table: str, dim: int, chunk: int = 16384
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Embeddings of the texts in catalog table `table` (columns pos, h: pos = rank of h in sorted order).

    Yields (pos (nc,) int64, emb (nc, dim) float32), `chunk` rows at a time, in whatever order DuckDB produces
    them, so the candidate side of a search is never held whole. The query is a semi-join (`IN`), whose hash
    table DuckDB always builds on the pool's hashes: a plain join may pick the cache side, vectors included, as
    its build side and hold them all (measured: 1.4 GB at 300k vectors). Positions come back by binary search
    in the pool's sorted hashes (20 bytes a text). Nothing else may run on the connection until it is exhausted.
    """
    hashes = np.array([r[0] for r in cat.con.execute(f"SELECT h FROM {table} ORDER BY pos").fetchall()],
                      dtype="S20")                                                    # sorted, as pos is h's rank
    reader = cat.con.execute(f"SELECT text_hash, vec FROM embedding_cache WHERE model_fp = ? AND text_hash IN "
                             f"(SELECT h FROM {table})", [fp]).to_arrow_reader(chunk)
    for rb in reader:
        if rb.num_rows == 0:
            continue
        h = np.array(rb.column(0).to_pylist(), dtype="S20")
        flat = rb.column(1).flatten().to_numpy(zero_copy_only=False)
        yield (np.searchsorted(hashes, h).astype(np.int64),
               np.array(flat, dtype=np.float32).reshape(rb.num_rows, dim))


@contextlib.contextmanager
def duckdb_memory(cat: Catalog, limit: str | None) -> Iterator[None]:
    """DuckDB's memory_limit set to `limit` for the block, then restored.

    DuckDB keeps the blocks it reads in its buffer pool, up to 80% of RAM by default: streaming a million cached
    vectors (1.5 GB at dimension 384) would leave them all resident. Capped, it evicts them (they are clean,
    on disk), so the mining process stays bounded however large the pool.
    """
    if not limit:
        yield
        return
    old = cat.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    cat.con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        cat.con.execute(f"SET memory_limit = '{old}'")
