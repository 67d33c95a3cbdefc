"""Byte grouping: the k bytes of each element split into k planes, and back.

Float exponents and high mantissa bytes vary slowly between neighbouring weights, so
each plane alone compresses far better than the interleaved bytes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_bytes", "ungroup_bytes"]


def group_bytes(data: bytes | memoryview, element_size: int) -> bytes:
    """Plane-major copy of ``data``; ``len(data)`` must be a multiple of ``element_size``."""
    elements = np.frombuffer(data, dtype=np.uint8).reshape(-1, element_size)
    return np.ascontiguousarray(elements.T).tobytes()


def ungroup_bytes(planes: bytes | memoryview, element_size: int) -> bytes:
    grouped = np.frombuffer(planes, dtype=np.uint8).reshape(element_size, -1)
    return np.ascontiguousarray(grouped.T).tobytes()
