"""XOR against a base of equal length: unchanged bytes become zeros, which compress away."""

from __future__ import annotations

import numpy as np

from castore.errors import IntegrityError

__all__ = ["xor_bytes"]


def xor_bytes(data: bytes | memoryview, base: bytes | memoryview) -> bytes:
    """``data ^ base``, its own inverse; both must have the same length."""
    if len(data) != len(base):
        raise IntegrityError(f"delta base has {len(base)} bytes, the chunk has {len(data)}")
    return np.bitwise_xor(
        np.frombuffer(data, dtype=np.uint8), np.frombuffer(base, dtype=np.uint8)
    ).tobytes()
