"""XOR against a base of equal length: unchanged bytes become zeros, which compress away."""

from __future__ import annotations

import numpy as np

from castore.errors import IntegrityError

__all__ = ["xor_into", "xor_with"]


def _check(data: np.ndarray, base: bytes | memoryview | np.ndarray) -> np.ndarray:
    base_array = np.frombuffer(base, dtype=np.uint8) if not isinstance(base, np.ndarray) else base
    if base_array.size != data.size:
        raise IntegrityError(f"delta base has {base_array.size} bytes, the chunk has {data.size}")
    return base_array


def xor_with(data: np.ndarray, base: bytes | memoryview | np.ndarray) -> np.ndarray:
    """A new array ``data ^ base``; XOR is its own inverse."""
    return np.bitwise_xor(data, _check(data, base))


def xor_into(data: np.ndarray, base: bytes | memoryview | np.ndarray) -> None:
    """``data ^= base`` in place."""
    np.bitwise_xor(data, _check(data, base), out=data)
