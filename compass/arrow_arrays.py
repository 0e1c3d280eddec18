"""Arrow columns read as numpy arrays from their buffers, without a Python object per row.

Stages stream millions of text hashes and signature blobs out of DuckDB (`to_arrow_reader`); `to_pylist()` makes a
Python string or bytes object per row, which at 1M products cost more than the queries themselves.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _offsets(col: pa.Array) -> np.ndarray:
    large = pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type)
    width = 8 if large else 4
    return np.frombuffer(col.buffers()[1], np.int64 if large else np.int32, len(col) + 1, col.offset * width)


def _combined(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    return col


def hash_array(col) -> np.ndarray:
    """An Arrow column of 20-character text hashes as (n,) S20."""
    col = _combined(col)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    if col.null_count == 0 and len(col):
        off = _offsets(col)
        if (np.diff(off) == 20).all():
            return np.frombuffer(col.buffers()[2], np.uint8, int(off[-1] - off[0]), int(off[0])).view("S20").copy()
    return np.array(col.to_pylist(), dtype="S20")


def uint32_rows(col, width: int) -> np.ndarray:
    """An Arrow column of blobs, each `width` little-endian uint32 (MinHash signatures), as (n, width) uint32."""
    col = _combined(col)
    if not len(col):
        return np.empty((0, width), np.uint32)
    if col.null_count == 0 and (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        off = _offsets(col)
        if (np.diff(off) == 4 * width).all():
            flat = np.frombuffer(col.buffers()[2], "<u4", len(col) * width, int(off[0]))
            return flat.astype(np.uint32).reshape(len(col), width)     # a copy: the batch's buffer is freed
    blobs = col.to_pylist()
    if any(b is None or len(b) != 4 * width for b in blobs):
        raise ValueError(f"signature blobs are not all {4 * width} bytes")
    return np.frombuffer(b"".join(blobs), dtype="<u4").astype(np.uint32).reshape(len(blobs), width)


_NIBBLE = np.zeros(256, np.uint64)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint64)


def hash_prefix64(hashes: np.ndarray) -> np.ndarray:
    """(n,) S20 lowercase hex hashes -> (n,) uint64 of their first 16 hex digits: sorted and searched as numbers,
    ten times faster than as 20-byte strings. Equal prefixes do not make equal hashes: check the bytes after."""
    if not len(hashes):
        return np.empty(0, np.uint64)
    digits = _NIBBLE[np.frombuffer(np.ascontiguousarray(hashes, "S20").tobytes(), np.uint8).reshape(-1, 20)[:, :16]]
    return (digits << (np.uint64(4) * np.arange(15, -1, -1, dtype=np.uint64))).sum(axis=1, dtype=np.uint64)
