"""Cached vectors into the memory-mapped files mining searches: every pool's and every query set's, in one scan
of the embedding cache per cache key (`VectorFill`), with text hashes moved as fixed-width bytes, not a Python
string each (`hash_array`, `_strings`)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from compass.arrow_arrays import hash_array
from compass.catalog.db import Catalog, duckdb_memory, registered
from compass.errors import CompassError


class VectorFill:
    """Cached vectors into many memory-mapped files (one per pool and per pool's queries), in one scan of the
    embedding cache per cache key.

    Why: each file filled by its own query (`text_hash IN (...)`, a semi-join) scanned the whole cache, vectors
    included: at 1M products, 45 pools x 2 such scans of a 3 GB table were a tenth of `mine`'s time and grew with
    the catalog times the pools. The files are written with `os.pwrite`, through the page cache: a file mapped
    for writing would hold every page it touched in the process's resident memory until it was closed. The query
    stays a semi-join (`IN`), whose hash table DuckDB builds on the wanted hashes: a plain join may pick the cache
    side, vectors included, as its build side and hold them all (measured: 1.4 GB at 300k vectors).
    """

    def __init__(self, dim: int):
        self.dim = dim
        self._want: dict[str, list[tuple[np.ndarray, str, int]]] = {}   # key -> [(sorted S20 hashes, file, offset)]

    def add(self, key: str, hashes: np.ndarray, path: str) -> np.ndarray:
        """Plan `path` to hold the vectors of `hashes` (sorted), row i that of hashes[i]; returns the file mapped
        read-only (zeros until `run`: the mapping shares the page cache `run` writes through)."""
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(hashes), self.dim)).flush()
        mapped = np.load(path, mmap_mode="r")
        self._want.setdefault(key, []).append((hashes, path, mapped.offset))   # offset: where the .npy data starts
        return mapped

    def run(self, cat: Catalog, memory: str | None = None, chunk: int = 16384, per_scan: int = 1 << 20) -> None:
        """Fill every planned file; every hash must be found in the cache. A scan looks for at most `per_scan`
        distinct texts (DuckDB's hash table of them and their Arrow copy stay around 100 MB a million)."""
        row_bytes = self.dim * 4
        for key, want in self._want.items():
            if not sum(len(w[0]) for w in want):
                continue
            # every (hash, file, row) wanted, sorted by hash: a text may be wanted by several files
            h = np.concatenate([w[0] for w in want])
            f = np.repeat(np.arange(len(want), dtype=np.int32), [len(w[0]) for w in want])
            r = np.concatenate([np.arange(len(w[0]), dtype=np.int64) for w in want])
            order = np.argsort(h, kind="stable")
            h, f, r = h[order], f[order], r[order]
            del order
            distinct = h[np.r_[True, h[1:] != h[:-1]]]
            done = 0
            for s in range(0, len(distinct), per_scan):
                with registered(cat.con, "_mine_need", pa.table({"h": _strings(distinct[s:s + per_scan])})), \
                        duckdb_memory(cat, memory):
                    for rb in cat.con.execute("SELECT text_hash, vec FROM embedding_cache WHERE model_fp = ? AND "
                                              "text_hash IN (SELECT h FROM _mine_need)", [key]).to_arrow_reader(chunk):
                        if rb.num_rows == 0:
                            continue
                        got = hash_array(rb.column(0))
                        vec = rb.column(1).flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                        vec = vec.reshape(rb.num_rows, self.dim)
                        lo, hi = np.searchsorted(h, got, "left"), np.searchsorted(h, got, "right")
                        n = hi - lo                                              # files wanting each row's text
                        src = np.repeat(np.arange(rb.num_rows), n)
                        tgt = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
                        self._write(want, vec, src, f[tgt], r[tgt], row_bytes)
                        done += len(tgt)
            if done != len(h):
                raise CompassError(f"embedding cache lacks {len(h) - done} of {len(h)} wanted vectors for encoder "
                                   f"key {key}: run the encode stage first (`compass mine` does)")
        self._want = {}

    @staticmethod
    def _write(want: list, vec: np.ndarray, src: np.ndarray, files: np.ndarray, rows: np.ndarray,
               row_bytes: int) -> None:
        """vec[src[t]] to row rows[t] of file files[t], each file opened once a call: a pool per market can make
        hundreds of files, too many to hold open at once under the usual limit of 1,024 descriptors."""
        if not len(files):
            return
        order = np.argsort(files, kind="stable")
        src, files, rows = src[order], files[order], rows[order]
        bounds = np.flatnonzero(np.r_[True, files[1:] != files[:-1], True])
        for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            _, path, offset = want[int(files[a])]
            fd = os.open(path, os.O_WRONLY)
            try:
                for i, row in zip(src[a:b].tolist(), rows[a:b].tolist()):
                    os.pwrite(fd, vec[i].tobytes(), offset + row * row_bytes)
            finally:
                os.close(fd)


def _strings(hashes: np.ndarray) -> pa.Array:
    """(n,) S20 as an Arrow string array, from one buffer (a Python str each was 80+ bytes a hash)."""
    if len(hashes) and (np.char.str_len(hashes) == 20).all():
        offsets = np.arange(0, 20 * (len(hashes) + 1), 20, dtype=np.int32)
        return pa.StringArray.from_buffers(len(hashes), pa.py_buffer(offsets.tobytes()),
                                           pa.py_buffer(np.ascontiguousarray(hashes).tobytes()))
    return pa.array([x.decode() for x in hashes], pa.string())


__all__ = ["VectorFill", "hash_array"]
