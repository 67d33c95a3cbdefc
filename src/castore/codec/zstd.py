"""zstd compression with per-thread contexts (a context is not safe to share)."""

from __future__ import annotations

import threading

import zstandard

from castore.errors import IntegrityError

__all__ = ["compress", "content_size", "decompress"]

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def compress(data: bytes | memoryview, level: int) -> bytes:
    return _compressor(level).compress(data)


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
