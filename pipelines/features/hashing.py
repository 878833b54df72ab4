"""MurmurHash3 (x86, 32-bit) of many strings at once, in numpy: the bucket of a ``hashed`` column's value.

The hashed encoding puts a value in bucket ``murmurhash3_32(utf8(value), seed=0) % buckets`` (unsigned), the hash
scikit-learn's ``murmurhash3_32(value, positive=True)`` and ``FeatureHasher`` compute, so models exported
before this module existed keep their buckets. It is written here, vectorized over the values, so that the
workers that encode the training rows need numpy only, not scikit-learn (about 1.3 s of imports per new Python
worker).

The loop runs over 4-byte blocks, not over values: step ``j`` mixes block ``j`` of every value that has one, so
the cost is the values' total length plus one numpy call per block of the longest value.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa

_C1 = np.uint32(0xCC9E2D51)
_C2 = np.uint32(0x1B873593)
_UInt32Array = npt.NDArray[np.uint32]


def murmurhash3_32(strings: pa.Array, seed: int = 0) -> _UInt32Array:
    """The unsigned 32-bit MurmurHash3 of each value's UTF-8 bytes, shape ``(len(strings),)``.

    ``strings``: an Arrow ``string`` or ``large_string`` array without nulls (the caller decides what a null
    hashes as).
    """
    if strings.null_count:
        raise ValueError("murmurhash3_32: null values have no bytes to hash")
    if not (pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type)):
        raise TypeError(f"murmurhash3_32: expected strings, got {strings.type}")
    offset_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
    _, offsets_buffer, data_buffer = strings.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[strings.offset:strings.offset + len(strings) + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = (offsets[1:] - offsets[:-1]).astype(np.int64)
    hashes = np.full(len(strings), seed, dtype=np.uint32)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps, as the algorithm intends
        # body: the values longest first, so the values with a block j are a prefix of this order
        blocks = lengths // 4
        order = np.argsort(-blocks, kind="stable")
        blocks_in_order = blocks[order]
        for j in range(int(blocks_in_order[0]) if blocks_in_order.size else 0):
            active = order[:np.searchsorted(-blocks_in_order, -j, side="left")]
            k = _mix(_word(data, starts[active] + 4 * j, 4))
            h = hashes[active] ^ k
            h = _rotl(h, 13)
            hashes[active] = h * np.uint32(5) + np.uint32(0xE6546B64)
        # tail: the last 1-3 bytes
        tail = lengths & 3
        has_tail = np.flatnonzero(tail)
        if has_tail.size:
            k = _word(data, starts[has_tail] + 4 * blocks[has_tail], tail[has_tail])
            hashes[has_tail] ^= _mix(k)
        # finalization
        hashes ^= lengths.astype(np.uint32)
        hashes ^= hashes >> np.uint32(16)
        hashes *= np.uint32(0x85EBCA6B)
        hashes ^= hashes >> np.uint32(13)
        hashes *= np.uint32(0xC2B2AE35)
        hashes ^= hashes >> np.uint32(16)
    return hashes


def _word(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
          sizes: int | npt.NDArray[np.int64]) -> _UInt32Array:
    """The little-endian words of ``sizes`` (1-4) bytes at ``starts`` (missing high bytes are 0)."""
    word = np.zeros(starts.shape, dtype=np.uint32)
    for byte in range(4):
        present = np.flatnonzero(byte < np.asarray(sizes)) if not isinstance(sizes, int) else \
            (np.arange(starts.size) if byte < sizes else np.zeros(0, np.int64))
        word[present] |= data[starts[present] + byte].astype(np.uint32) << np.uint32(8 * byte)
    return word


def _mix(k: _UInt32Array) -> _UInt32Array:
    k = k * _C1
    k = _rotl(k, 15)
    return k * _C2


def _rotl(x: _UInt32Array, r: int) -> _UInt32Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))
