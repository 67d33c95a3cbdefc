"""Byte planes: the k bytes of each element split into k planes, and back.

Float exponents (and high mantissa bytes) vary slowly between neighbouring weights, so
each plane compresses on its own far better than the interleaved bytes, and planes that
do not compress (low mantissa bytes) can be stored raw instead of wasting zstd's time.
Splitting is one transposing copy; joining writes one plane at a time, both near memory
speed in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["scatter_plane", "split_planes"]


def split_planes(data: np.ndarray, element_size: int) -> list[np.ndarray]:
    """Contiguous plane arrays of a uint8 array whose length is a multiple of k."""
    return list(data.reshape(-1, element_size).T.copy())


def scatter_plane(out: np.ndarray, plane: np.ndarray, index: int, element_size: int) -> None:
    """Write ``plane`` as byte ``index`` of every element of ``out`` (uint8, in place)."""
    out.reshape(-1, element_size)[:, index] = plane
