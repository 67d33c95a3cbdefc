"""The closed table of tensor element types castore stores, by short stable code.

Codes are part of the on-disk format (``docs/format.md``); torch dtypes missing from an
older torch are left out of the table rather than guessed.
"""

from __future__ import annotations

import torch

from castore.errors import FormatError, InvalidCheckpointError

__all__ = ["code_of", "dtype_of", "element_size"]

_CANDIDATES: dict[str, str] = {
    "f64": "float64",
    "f32": "float32",
    "f16": "float16",
    "bf16": "bfloat16",
    "f8e4m3fn": "float8_e4m3fn",
    "f8e4m3fnuz": "float8_e4m3fnuz",
    "f8e5m2": "float8_e5m2",
    "f8e5m2fnuz": "float8_e5m2fnuz",
    "f8e8m0fnu": "float8_e8m0fnu",
    "c32": "complex32",
    "c64": "complex64",
    "c128": "complex128",
    "i64": "int64",
    "i32": "int32",
    "i16": "int16",
    "i8": "int8",
    "u64": "uint64",
    "u32": "uint32",
    "u16": "uint16",
    "u8": "uint8",
    "bool": "bool",
}

_BY_CODE: dict[str, torch.dtype] = {
    code: getattr(torch, name) for code, name in _CANDIDATES.items() if hasattr(torch, name)
}
_BY_DTYPE: dict[torch.dtype, str] = {dtype: code for code, dtype in _BY_CODE.items()}


def code_of(dtype: torch.dtype, *, tensor: str | None = None) -> str:
    """The stored code of ``dtype``; unsupported types are refused before any write."""
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise InvalidCheckpointError(
            f"dtype {dtype} is not supported; convert the tensor to a standard dtype",
            tensor=tensor,
        ) from None


def dtype_of(code: str, *, tensor: str | None = None) -> torch.dtype:
    try:
        return _BY_CODE[code]
    except KeyError:
        raise FormatError(
            f"unknown dtype code {code!r}; this store was written by a newer castore",
            tensor=tensor,
        ) from None


def element_size(code: str) -> int:
    return torch.empty((), dtype=dtype_of(code)).element_size()
