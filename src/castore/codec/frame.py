"""encode_frame / decode_frame: the one pair that turns chunk bytes into blob frames.

Encoding chain: [xor-delta against a base] -> [byte grouping] -> raw | zstd.
Decoding runs it backwards and verifies the BLAKE3 digest of the result, so a reader
never returns bytes that differ from what was hashed at save time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from castore._config import CodecOptions
from castore.codec import zstd
from castore.codec.bytegroup import group_bytes, ungroup_bytes
from castore.codec.hashing import verify
from castore.codec.header import CodecId, FilterFlags, FrameHeader, pack_header, unpack_header
from castore.codec.xordelta import xor_bytes
from castore.errors import IntegrityError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["decode_frame", "encode_frame", "read_header"]

_SAMPLE_BYTES = 32 * 1024
_SAMPLES = 4
_DEFAULT_OPTIONS = CodecOptions()

read_header = unpack_header


def encode_frame(
    data: bytes | memoryview,
    *,
    element_size: int = 1,
    base: bytes | memoryview | None = None,
    base_digest: str | None = None,
    options: CodecOptions = _DEFAULT_OPTIONS,
) -> bytes:
    """Encode ``data`` (the decoded chunk) into a self-describing frame.

    ``element_size`` > 1 enables byte grouping for compressed frames. With ``base`` and
    ``base_digest`` the payload is the XOR against the base chunk (same length). The
    codec is ``options.codec``; ``auto`` keeps a chunk raw unless zstd saves at least
    ``options.min_saving`` on samples and then on the whole.
    """
    length = len(data)
    filters = FilterFlags.NONE
    body: bytes | memoryview = data
    if base is not None:
        if base_digest is None:
            raise ValueError("a delta frame needs base_digest")
        body = xor_bytes(data, base)
        filters |= FilterFlags.XOR_DELTA
    else:
        base_digest = None

    if options.codec != "raw":
        grouped = element_size > 1 and length % element_size == 0
        unit = element_size if grouped else 1
        if options.codec == "zstd" or _worth_compressing(body, unit, options):
            stage = group_bytes(body, unit) if grouped else body
            payload = zstd.compress(stage, options.zstd_level)
            if options.codec == "zstd" or len(payload) <= length * (1 - options.min_saving):
                if grouped:
                    filters |= FilterFlags.BYTE_GROUPED
                header = FrameHeader(CodecId.ZSTD, filters, unit, length, base_digest)
                return pack_header(header) + payload

    header = FrameHeader(CodecId.RAW, filters, 1, length, base_digest)
    return pack_header(header) + bytes(body)


def decode_frame(
    frame: bytes | memoryview,
    *,
    digest: str,
    expected_length: int | None = None,
    get_base: Callable[[str], bytes] | None = None,
) -> bytes:
    """Decode a frame and verify it hashes to ``digest``.

    ``expected_length`` (from the manifest) is checked against the header before any
    decompression, so a forged header cannot drive a large allocation. ``get_base``
    returns the decoded bytes of a delta frame's base.

    Raises:
        IntegrityError: corruption, truncation, wrong length or digest mismatch.
        FormatError: a frame version, codec or filter this castore does not know.
    """
    try:
        body = _decode(frame, expected_length, get_base)
        verify(body, digest)
    except IntegrityError as exc:
        if exc.digest is None:
            exc.digest = digest
        raise
    return bytes(body) if isinstance(body, memoryview) else body


def _decode(
    frame: bytes | memoryview,
    expected_length: int | None,
    get_base: Callable[[str], bytes] | None,
) -> bytes | memoryview:
    header = unpack_header(frame)
    if expected_length is not None and header.decoded_length != expected_length:
        raise IntegrityError(
            f"frame says {header.decoded_length} decoded bytes, the manifest says {expected_length}"
        )
    payload = memoryview(frame)[header.size :]
    if header.codec == CodecId.ZSTD:
        body: bytes | memoryview = zstd.decompress(payload, header.decoded_length)
    elif len(payload) != header.decoded_length:
        raise IntegrityError(
            f"raw frame holds {len(payload)} bytes, header says {header.decoded_length}"
        )
    else:
        body = payload
    if header.filters & FilterFlags.BYTE_GROUPED:
        if header.decoded_length % header.element_size:
            raise IntegrityError("byte-grouped frame length is not a multiple of its elements")
        body = ungroup_bytes(body, header.element_size)
    if header.base_digest is not None:
        if get_base is None:
            raise IntegrityError(f"delta frame needs its base {header.base_digest[:12]}…")
        body = xor_bytes(body, get_base(header.base_digest))
    return body


def _worth_compressing(data: bytes | memoryview, element_size: int, options: CodecOptions) -> bool:
    """Estimate zstd's saving from a few evenly spaced samples, grouped like the real thing."""
    length = len(data)
    if length <= _SAMPLES * _SAMPLE_BYTES:
        return True
    view = memoryview(data)
    step = (length - _SAMPLE_BYTES) // (_SAMPLES - 1)
    step -= step % element_size
    sample = b"".join(view[i * step : i * step + _SAMPLE_BYTES] for i in range(_SAMPLES))
    if element_size > 1:
        sample = group_bytes(sample, element_size)
    compressed = zstd.compress(sample, options.zstd_level)
    return len(compressed) <= len(sample) * (1 - options.min_saving)
