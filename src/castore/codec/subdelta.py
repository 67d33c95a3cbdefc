"""Sub-delta: each k-byte element minus the base's, zigzag-coded, against a base of equal length.

A small change in a float's mantissa that carries across bits flips many bits under XOR,
but stays a small number as the difference of the bit patterns; zigzag coding
(``d >= 0 -> 2d``, ``d < 0 -> -2d - 1``) keeps small negative differences small too, so
the high byte planes stay near zero and compress away. On consecutive training
checkpoints (byte planes + zstd) that stores 2.5-3.5% fewer bytes than XOR.

numpy has no fused zigzag, so each block takes four (encode) or five (decode) passes
where XOR takes one; blocks of 256 KiB keep a block, the base's block and one temporary
in L2, so only the first pass touches memory and no full-size temporary is made. On
4 MiB float32 chunks that costs about 0.06 s of CPU per GiB more than XOR each way
(1.9x XOR's filter to encode, 2.8x to decode, from memory), while the whole frame costs
no more: the planes of small differences compress faster than XOR's.
"""

from __future__ import annotations

import numpy as np

from castore.codec.header import SUB_DELTA_SIZES
from castore.errors import IntegrityError

__all__ = ["sub_decode_into", "sub_encode"]

_BLOCK_BYTES = 256 * 1024
_UNSIGNED = {k: np.dtype(f"<u{k}") for k in SUB_DELTA_SIZES}
_SIGNED = {k: np.dtype(f"<i{k}") for k in SUB_DELTA_SIZES}


def _words(data: np.ndarray, base: bytes | memoryview | np.ndarray, k: int) -> np.ndarray:
    """``base`` as k-byte words, after checking that it matches ``data`` in length."""
    base_bytes = np.frombuffer(base, dtype=np.uint8) if not isinstance(base, np.ndarray) else base
    if base_bytes.size != data.size:
        raise IntegrityError(f"delta base has {base_bytes.size} bytes, the chunk has {data.size}")
    if k not in _UNSIGNED or data.size % k:
        raise IntegrityError(f"sub-delta needs 1, 2, 4 or 8 byte elements dividing {data.size}")
    return np.ascontiguousarray(base_bytes).view(_UNSIGNED[k])


def sub_encode(data: np.ndarray, base: bytes | memoryview | np.ndarray, k: int) -> np.ndarray:
    """A new uint8 array of the zigzag codes of ``data - base`` in k-byte elements."""
    base_words = _words(data, base, k)
    data_words = np.ascontiguousarray(data).view(_UNSIGNED[k])
    codes = np.empty_like(data_words)
    step = max(1, _BLOCK_BYTES // k)
    sign = np.empty(min(step, codes.size), dtype=_SIGNED[k])
    for start in range(0, codes.size, step):
        block = codes[start : start + step]
        mask = sign[: block.size]
        np.subtract(data_words[start : start + step], base_words[start : start + step], out=block)
        np.right_shift(block.view(_SIGNED[k]), 8 * k - 1, out=mask)  # all ones where d < 0
        if k == 1:  # numpy shifts bytes without SIMD; doubling is the same, 20x faster
            np.add(block, block, out=block)
        else:
            np.left_shift(block, 1, out=block)
        np.bitwise_xor(block, mask.view(_UNSIGNED[k]), out=block)
    return codes.view(np.uint8)


def sub_decode_into(out: np.ndarray, base: bytes | memoryview | np.ndarray, k: int) -> None:
    """Turn the zigzag codes in ``out`` (contiguous uint8) into ``base + d`` in place."""
    base_words = _words(out, base, k)
    words = out.view(_UNSIGNED[k])
    step = max(1, _BLOCK_BYTES // k)
    mask = np.empty(min(step, words.size), dtype=_UNSIGNED[k])
    for start in range(0, words.size, step):
        block = words[start : start + step]
        low = mask[: block.size]
        np.bitwise_and(block, 1, out=low)
        np.negative(low, out=low)  # all ones where d < 0
        np.right_shift(block, 1, out=block)
        np.bitwise_xor(block, low, out=block)
        np.add(block, base_words[start : start + step], out=block)
