"""Arrow columns read from their buffers equal the row-by-row reading, slices and chunks included."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from compass.arrow_arrays import hash_array, uint32_rows


def test_signature_blobs_read_from_the_buffer_equal_the_rows():
    rng = np.random.default_rng(0)
    m = rng.integers(0, 2**32, (10, 4), dtype=np.uint64).astype(np.uint32)
    col = pa.array([r.astype("<u4").tobytes() for r in m], pa.binary())
    assert np.array_equal(uint32_rows(col, 4), m)
    assert np.array_equal(uint32_rows(col.slice(3, 5), 4), m[3:8])               # an offset into the buffer
    assert np.array_equal(uint32_rows(pa.chunked_array([col.slice(0, 4), col.slice(4)]), 4), m)
    assert np.array_equal(uint32_rows(pa.array([r.tobytes() for r in m], pa.large_binary()), 4), m)
    assert uint32_rows(pa.array([], pa.binary()), 4).shape == (0, 4)
    with pytest.raises(ValueError, match="not all 16 bytes"):
        uint32_rows(pa.array([m[0].tobytes(), b"\x00"], pa.binary()), 4)


def test_text_hashes_read_from_the_buffer_equal_the_rows():
    hashes = [f"{i:020x}" for i in range(7)]
    col = pa.array(hashes)
    assert hash_array(col).tolist() == [h.encode() for h in hashes]
    assert hash_array(col.slice(2, 3)).tolist() == [h.encode() for h in hashes[2:5]]
    assert hash_array(pa.array(["short", hashes[0]])).tolist() == [b"short", hashes[0].encode()]   # row by row


def test_hash_prefixes_sort_as_the_hashes_and_equal_prefixes_are_found():
    from compass.arrow_arrays import hash_prefix64

    rng = np.random.default_rng(1)
    digits = rng.choice(np.frombuffer(b"0123456789abcdef", np.uint8), (200, 20))
    hashes = np.array(sorted(bytes(row) for row in digits), dtype="S20")
    keys = hash_prefix64(hashes)
    assert (keys[1:] >= keys[:-1]).all() and [int(k) for k in keys] == [int(h[:16], 16) for h in hashes]
    assert hash_prefix64(np.array([b"ffffffffffffffff0000"], "S20"))[0] == np.uint64(2**64 - 1)
