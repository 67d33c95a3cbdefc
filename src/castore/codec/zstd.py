"""zstd compression with per-thread contexts (a context is not safe to share)."""

from __future__ import annotations

import threading
from typing import Final, Literal

import zstandard

from castore.errors import IntegrityError

__all__ = ["FAST", "Setting", "compress", "content_size", "decompress"]

FAST: Final = "fast"
"""A setting that finds almost no matches (a 64-entry hash table, 7-byte minimum), so it
codes nearly only Huffman literals: on float exponent planes 2.5x faster than level 1
and mostly smaller, but larger where repeats pay off (recurring changes in XOR deltas)."""

Setting = int | Literal["fast"]
"""A zstd level, or ``FAST``; the frame format, and so decoding, is the same for all."""

_local = threading.local()


def _compressor(setting: Setting) -> zstandard.ZstdCompressor:
    cache: dict[Setting, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    if setting not in cache:
        if isinstance(setting, int):
            cache[setting] = zstandard.ZstdCompressor(level=setting, write_content_size=True)
        else:
            parameters = zstandard.ZstdCompressionParameters(
                strategy=zstandard.STRATEGY_FAST, hash_log=6, min_match=7, write_content_size=1
            )
            cache[setting] = zstandard.ZstdCompressor(compression_params=parameters)
    return cache[setting]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def compress(data: bytes | memoryview, setting: Setting) -> bytes:
    return _compressor(setting).compress(data)


def decompress(payload: bytes | memoryview, decoded_length: int) -> bytes:
    """Decompress exactly ``decoded_length`` bytes; never allocates more than that.

    python-zstandard sizes its output by the content size the frame declares, whatever
    ``max_output_size`` says, so a declared size other than the expected one is refused
    before anything is allocated.
    """
    declared = content_size(payload)
    if declared != decoded_length:
        raise IntegrityError(
            f"zstd payload declares {declared} decoded bytes where {decoded_length} are expected"
        )
    try:
        out = _decompressor().decompress(
            payload, max_output_size=decoded_length, allow_extra_data=False
        )
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"zstd payload does not decode: {exc}") from exc
    if len(out) != decoded_length:
        raise IntegrityError(
            f"zstd payload decoded to {len(out)} bytes, header says {decoded_length}"
        )
    return out


def content_size(payload: bytes | memoryview) -> int:
    """The decoded size a zstd frame declares, or -1 when it declares none or is not one."""
    try:
        return zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        return -1
