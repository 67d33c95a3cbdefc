"""Byte planes: the k bytes of each element split into k planes, and back.

Float exponents (and high mantissa bytes) vary slowly between neighbouring weights, so
each plane compresses on its own far better than the interleaved bytes, and planes that
do not compress (low mantissa bytes) can be stored raw instead of wasting zstd's time.

Splitting is the writer's cost. numpy's transposing copy moves one byte per step, so
2, 4 and 8 byte elements are read as little-endian words instead: plane j is
``word >> 8*j`` cast to uint8, whole-array operations that numpy vectorises, run over
blocks small enough to stay in cache. On 4 MiB chunks, single-threaded, that is about
3x (k=2), 2x (k=4) and 1.2x (k=8) faster. Joining (the reader's) stays one strided
write per plane, as each plane is decoded: rebuilding words by shift and OR measured
only 7% faster for k=4 (2x for k=2), slower for k=8, and needs every plane at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["scatter_plane", "split_planes"]

# Input bytes per block: a block, its planes and the shifted words stay in L2.
_BLOCK_BYTES = 256 * 1024
_WORDS = {2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def split_planes(data: np.ndarray, element_size: int) -> list[np.ndarray]:
    """Contiguous plane arrays of a uint8 array whose length is a multiple of k."""
    word = _WORDS.get(element_size)
    if word is None or not data.flags.c_contiguous:
        return list(data.reshape(-1, element_size).T.copy())
    words = data.view(word)
    planes = np.empty((element_size, words.size), dtype=np.uint8)
    shifted = np.empty(max(1, min(words.size, _BLOCK_BYTES // element_size)), dtype=word)
    for start in range(0, words.size, shifted.size):
        block = words[start : start + shifted.size]
        end = start + block.size
        np.copyto(planes[0, start:end], block, casting="unsafe")
        for index in range(1, element_size):
            np.right_shift(block, 8 * index, out=shifted[: block.size])
            np.copyto(planes[index, start:end], shifted[: block.size], casting="unsafe")
    return list(planes)


def scatter_plane(out: np.ndarray, plane: np.ndarray, index: int, element_size: int) -> None:
    """Write ``plane`` as byte ``index`` of every element of ``out`` (uint8, in place)."""
    out.reshape(-1, element_size)[:, index] = plane
