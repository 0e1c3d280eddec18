"""The encoder for mining: load a sentence-transformers model offline, fingerprint it, cache its embeddings.

The cache lives in the catalog (`embedding_cache`, FLOAT[] per text; see migration 0030 for why not a side
file), keyed by (encoder key, text hash). The fingerprint hashes the weights, tokenizer and module stack, not
the path, so a model copied elsewhere reuses its rows and a retrained one at the same path does not.

Anchors are encoded as queries (`encode_query`) and candidates as documents (`encode_document`). A model with
query/document prompts (e5: "query: " / "passage: ") embeds the same text differently in the two roles, so
the encoder key is the fingerprint plus a hash of the prompt the role applies (`role_key`); a model without
prompts has one key, the bare fingerprint, for both roles (the rows it cached before prompts existed stay valid).

`EncodeStage` ("encode" in the stage registry) fills the cache: pending = the distinct texts of its sources with
no vector under its role's key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator

from compass.catalog.db import Catalog, registered
from compass.catalog.writes import insert_rows
from compass.errors import CompassError
from compass.ids import text_hash
from compass.registry import stages
from compass.stage import Selection, Stage

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


@dataclass(frozen=True)
class EncoderKeys:
    """What identifies a loaded encoder in the catalog: its fingerprint, one cache key per role, its prompts."""

    name: str                    # as given (--model): a label for encoder_models
    fp: str
    dim: int
    keys: dict                   # {role: cache key}
    prompts: dict                # {role: prompt} for the roles that apply one

    def label(self, role: str) -> str:
        key = self.keys[role]
        return self.name if key == self.fp else f"{self.name} ({role}: {self.prompts.get(role, '')!r})"


def encoder_keys(model, name: str) -> EncoderKeys:
    fp = model_fingerprint(model)
    dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
              else model.get_sentence_embedding_dimension())
    return EncoderKeys(name, fp, dim, {r: role_key(fp, model, r) for r in ROLES},
                       {r: role_prompt(model, r) for r in ROLES if role_prompt(model, r)})


def _hashes_table(texts: list[str]) -> pa.Table:
    return pa.table({"pos": pa.array(range(len(texts)), pa.int64()),
                     "h": pa.array([text_hash(t) for t in texts], pa.string())})


def vec_column(emb: np.ndarray) -> pl.Series:
    """(n, d) float32 -> a FLOAT[] column (what embedding_cache.vec stores)."""
    return pl.Series("vec", emb.astype(np.float32, copy=False)).cast(pl.List(pl.Float32))


def vec_array(col: pl.Series, dim: int) -> np.ndarray:
    """A FLOAT[] column -> (n, dim) float32, a writable copy (torch shares it)."""
    flat = col.explode().to_numpy()
    if col.null_count() or len(flat) != len(col) * dim:
        raise CompassError(f"embedding cache: {len(col)} vectors are not all of dimension {dim} (a null vector is "
                           "a text the cache lacks: run the encode stage first; `compass mine` does)")
    return np.array(flat, dtype=np.float32).reshape(len(col), dim)


def encode_missing(cat: Catalog, model, key: str, texts: list[str], batch_size: int, run_id: str | None,
                   progress: bool = True, role: str = "document") -> int:
    """Encode the distinct `texts` not cached under `key` (one transaction); for tests and benchmarks. Stages use
    `EncodeStage`, whose pending selection is the same question asked in SQL."""
    uniq = list(dict.fromkeys(texts))
    with registered(cat.con, "_mine_q", _hashes_table(uniq)):
        rows = cat.con.execute("SELECT q.pos FROM _mine_q q WHERE NOT EXISTS (SELECT 1 FROM embedding_cache c "
                               "WHERE c.model_fp = ? AND c.text_hash = q.h) ORDER BY q.pos", [key]).fetchall()
    todo = [uniq[r[0]] for r in rows]
    if todo:
        frame = pl.DataFrame({"model_fp": key, "text_hash": [text_hash(t) for t in todo],
                              "run_id": run_id}).with_columns(vec_column(encode_role(model, todo, role, batch_size,
                                                                                     progress)))
        with cat.transaction() as con:
            insert_rows(con, "embedding_cache", frame, ["model_fp", "text_hash"])
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


# --- the encode stage ------------------------------------------------------------------------------------------

SOURCES = ("anchors", "positives", "products:title", "products:category", "products:description")


class EncoderStage(Stage):
    """A stage that needs an encoder's identity (its cache keys), and to encode, the model: both loaded lazily,
    once, by the first method that needs them (`select` needs the keys: a cache key hashes the weights)."""

    model: ClassVar = None                  # a loaded SentenceTransformer; `use` sets one per instance
    _encoder: ClassVar[EncoderKeys | None] = None

    def use(self, model=None, encoder: EncoderKeys | None = None) -> EncoderStage:
        """Share an already loaded model (and its keys, to skip hashing the weights again)."""
        self.model, self._encoder = model, encoder
        return self

    def load_model(self):
        if self.model is None:
            self.model = load_encoder(self.config.model, self.config.device)
            fp = None if self._encoder is None else model_fingerprint(self.model)
            if fp is not None and fp != self._encoder.fp:
                # a worker on another machine, whose files at this path are not the driver's model
                raise CompassError(f"--model {self.config.model}: the model loaded here is not the one the run "
                                   f"was planned with (fingerprint {fp}, expected {self._encoder.fp}): put the "
                                   "same model files at that path on every node")
        return self.model

    @property
    def driver_only(self) -> str | None:
        """Why the stage must run on the driver (Ray actors reserve CPUs), or None."""
        if self.config.device != "cpu":
            return f"it runs on --device {self.config.device}, and Ray actors here reserve CPUs only"
        return None

    def __getstate__(self) -> dict:
        # Shipped to a worker without the driver's model: a worker loads it from `config.model` (the same files at
        # the same path on every node, as for the fastText model) and checks its fingerprint against the keys.
        return {**self.__dict__, "model": None}

    @property
    def encoder(self) -> EncoderKeys:
        if self._encoder is None:
            self._encoder = encoder_keys(self.load_model(), self.config.model)
        return self._encoder


class EncodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "e5-small"
    role: Literal["query", "document"] = "document"   # queries get the model's query prompt, documents its passage one
    sources: list[str] = ["positives"]                 # texts to encode: see SOURCES
    batch_size: int = 64                               # encoder batch
    device: str = "cpu"

    @field_validator("sources")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in SOURCES]
        if bad or not v:
            raise ValueError(f"unknown encode source(s) {bad or v}: use {', '.join(SOURCES)}")
        return v


def _lang_cond(col: str, langs: list[str] | None) -> tuple[str, list]:
    return (f"{col} IN ({', '.join('?' * len(langs))})", list(langs)) if langs else ("TRUE", [])


def source_sql(source: str, langs: list[str] | None) -> tuple[str, list]:
    """SQL of one source's texts (column `text`), restricted to `langs`."""
    cond, params = _lang_cond("lang", langs)
    if source in ("anchors", "positives"):
        return f"SELECT {source[:-1]} AS text FROM kept_examples WHERE {cond}", params
    field = source.split(":", 1)[1]                     # one of SOURCES: never user text in the SQL
    return (f"SELECT {field} AS text FROM products WHERE {cond} AND trim(coalesce({field}, '')) <> ''", params)


@stages.register
class EncodeStage(EncoderStage):
    """Texts -> cached embeddings (`embedding_cache`, keyed by the role's cache key and the text hash).

    Pending: the distinct texts of `sources` with no embedding under this key, so each distinct text is
    tokenized and encoded once, and a rerun (or a second negative set with the same encoder) encodes nothing.
    Shardable: a text's embedding depends on the text alone (on Ray, each actor loads the model from its path).
    """

    name: ClassVar[str] = "encode"
    Config = EncodeConfig
    writes = {"embedding_cache": ("model_fp", "text_hash"), "encoder_models": ("model_fp",)}
    appends = frozenset({"embedding_cache"})   # pending: distinct texts with no cache row for this model
    batch_size: ClassVar[int] = ENCODE_CHUNK
    unit: ClassVar[str] = "texts"
    volatile = frozenset({"batch_size", "device"})
    duckdb_memory: ClassVar[str | None] = "512MB"   # the runner's cap: its sort of distinct texts spills past it

    def select(self, langs: list[str] | None = None) -> Selection:
        parts, params = zip(*(source_sql(s, langs) for s in dict.fromkeys(self.config.sources)))
        body = (f"FROM (SELECT DISTINCT text FROM ({' UNION ALL '.join(parts)}) WHERE text IS NOT NULL) t "
                "WHERE NOT EXISTS (SELECT 1 FROM embedding_cache c WHERE c.model_fp = ? "
                "AND c.text_hash = substr(sha256(t.text), 1, 20))")
        p = [x for ps in params for x in ps] + [self.encoder.keys[self.config.role]]
        return Selection(f"SELECT t.text {body} ORDER BY t.text", p, f"SELECT count(*) {body}")

    def setup(self) -> None:
        self.load_model()

    def process(self, batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
        texts = batch["text"].to_list()
        role, enc = self.config.role, self.encoder
        emb = encode_role(self.load_model(), texts, role, self.config.batch_size, False)   # (b, dim)
        return {"embedding_cache": pl.DataFrame({"model_fp": [enc.keys[role]] * len(texts),
                                                 "text_hash": [text_hash(t) for t in texts],
                                                 "vec": vec_column(emb), "run_id": [self.run_id] * len(texts)},
                                                schema_overrides={"run_id": pl.Utf8}),
                "encoder_models": pl.DataFrame({"model_fp": [enc.keys[role]], "model": [enc.label(role)],
                                                "dim": [enc.dim], "run_id": [self.run_id]},
                                               schema_overrides={"run_id": pl.Utf8})}

    def summarize(self, outputs: dict[str, pl.DataFrame]) -> dict:
        return {"encoded": outputs["embedding_cache"].height}
