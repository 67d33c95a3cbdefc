"""Frames: the one place chunk bytes become blob bytes and back.

Encoding chain: [sub-delta or xor-delta against a base] -> raw | zstd | planes (byte
grouping with a codec per plane). Decoding runs it backwards straight into the caller's
buffer and verifies the BLAKE3 digest of the result there, so a reader never returns
bytes that differ from what was hashed at save time. ``decode_blob_into`` does the same from an
opened blob, reading a raw payload straight into the caller's buffer.
"""

from __future__ import annotations

import struct
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from castore._config import CodecOptions
from castore.codec import zstd
from castore.codec.hashing import verify as check_digest
from castore.codec.header import (
    MAX_HEADER_BYTES,
    SUB_DELTA_SIZES,
    CodecId,
    FilterFlags,
    FrameHeader,
    pack_header,
    unpack_header,
)
from castore.codec.planes import scatter_plane, split_planes
from castore.codec.subdelta import sub_decode_into, sub_encode
from castore.codec.xordelta import xor_into, xor_with
from castore.errors import IntegrityError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from castore.blobstore.reader import BlobReader

__all__ = [
    "Buffer",
    "decode_blob_into",
    "decode_frame",
    "decode_frame_into",
    "encode_frame",
    "encode_frame_parts",
]

Buffer = bytes | memoryview | np.ndarray

_SAMPLE_BYTES = 16 * 1024
_SAMPLES = 4
_PLANE_ENTRY = struct.Struct("<BQ")
_DEFAULT_OPTIONS = CodecOptions()


def encode_frame_parts(
    data: bytes | memoryview | np.ndarray,
    *,
    element_size: int = 1,
    base: bytes | memoryview | None = None,
    base_digest: str | None = None,
    options: CodecOptions = _DEFAULT_OPTIONS,
) -> list[Buffer]:
    """Encode a chunk into a frame, returned as buffers to write in order (no joining).

    ``element_size`` > 1 lets compressed frames split elements into byte planes, each
    stored raw or zstd, whichever is smaller. With ``base`` (and its ``base_digest``) the
    chunk is stored as its sub-delta against the base (zigzag differences of 1, 2, 4 or
    8-byte elements, which store smaller than XOR on drifting floats), or as its XOR where
    the elements are of another width. ``options.codec``: ``raw`` never compresses;
    ``zstd`` always does; ``auto`` compresses only what saves at least
    ``options.min_saving``, judged on samples first so incompressible bytes cost little.
    """
    array = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    length = array.size
    filters, width = FilterFlags.NONE, 1  # width: header byte 7 of a raw or zstd frame
    if base is not None:
        if base_digest is None:
            raise ValueError("a delta frame needs base_digest")
        if element_size in SUB_DELTA_SIZES and length % element_size == 0:
            array = sub_encode(array, base, element_size)
            filters, width = FilterFlags.SUB_DELTA, element_size
        else:
            array = xor_with(array, base)
            filters = FilterFlags.XOR_DELTA
    else:
        base_digest = None

    if options.codec != "raw" and length:
        if element_size > 1 and length % element_size == 0:
            planes = [_encode_part(p, options) for p in split_planes(array, element_size)]
            if any(codec == CodecId.ZSTD for codec, _ in planes):
                table = b"".join(_PLANE_ENTRY.pack(codec, len(p)) for codec, p in planes)
                header = FrameHeader(CodecId.PLANES, filters, element_size, length, base_digest)
                return [pack_header(header), table, *(p for _, p in planes)]
        else:
            codec, payload = _encode_part(array, options)
            if codec == CodecId.ZSTD:
                header = FrameHeader(CodecId.ZSTD, filters, width, length, base_digest)
                return [pack_header(header), payload]
    return [pack_header(FrameHeader(CodecId.RAW, filters, width, length, base_digest)), array]


def encode_frame(data: bytes | memoryview | np.ndarray, **kwargs: object) -> bytes:
    """``encode_frame_parts`` joined into one bytes object."""
    return b"".join(
        part.tobytes() if isinstance(part, np.ndarray) else bytes(part)
        for part in encode_frame_parts(data, **kwargs)  # type: ignore[arg-type]
    )


def decode_frame_into(
    frame: bytes | memoryview,
    out: np.ndarray,
    *,
    digest: str,
    get_base: Callable[[str], bytes] | None = None,
    verify: bool = True,
) -> None:
    """Decode ``frame`` into ``out`` (uint8, exactly the decoded length) and verify it.

    The header's length is checked against ``out`` before anything is decompressed, so
    a forged header cannot drive an allocation. ``get_base`` returns the decoded bytes of
    a delta frame's base. ``verify=False`` skips the digest check, for trusted local
    stores only: the frame's structure is still checked, its bytes are not.

    Raises:
        IntegrityError: corruption, truncation, wrong length or digest mismatch.
        FormatError: a frame version, codec or filter this castore does not know.
    """
    with _naming(digest):
        _decode_into(memoryview(frame), out, get_base)
        if verify:
            check_digest(out, digest)


def decode_blob_into(
    blob: BlobReader,
    out: np.ndarray,
    *,
    digest: str,
    get_base: Callable[[str], bytes] | None = None,
    verify: bool = True,
) -> None:
    """Decode the frame ``blob`` holds into ``out``, with the checks of ``decode_frame_into``.

    A raw frame's payload is read straight into ``out``, one copy from the page cache for
    a local blob file, and hashed right after, while those bytes are still in the CPU's
    caches; its length is checked against the header and ``out`` before anything is read.
    Other frames are decoded from the whole frame.
    """
    with _naming(digest):
        head = bytearray(min(blob.size, MAX_HEADER_BYTES))
        blob.read_into(0, memoryview(head))
        header = unpack_header(head)
        if header.codec != CodecId.RAW:
            decode_frame_into(blob.frame(), out, digest=digest, get_base=get_base, verify=verify)
            return
        _read_raw_into(blob, header, out)
        _apply_delta(header, out, get_base)
        if verify:
            check_digest(out, digest)


@contextmanager
def _naming(digest: str) -> Iterator[None]:
    """Name ``digest`` on an IntegrityError that does not name a blob yet."""
    try:
        yield
    except IntegrityError as exc:
        if exc.digest is None:
            exc.digest = digest
        raise


def decode_frame(
    frame: bytes | memoryview,
    *,
    digest: str,
    expected_length: int | None = None,
    get_base: Callable[[str], bytes] | None = None,
) -> bytes:
    """Decode and verify a frame into new bytes; see ``decode_frame_into``."""
    header = unpack_header(frame)
    length = header.decoded_length if expected_length is None else expected_length
    if header.decoded_length != length:
        raise IntegrityError(
            f"frame says {header.decoded_length} decoded bytes, the manifest says {length}",
            digest=digest,
        )
    _check_declared_length(memoryview(frame), header, digest)
    out = np.empty(length, dtype=np.uint8)
    decode_frame_into(frame, out, digest=digest, get_base=get_base)
    return out.tobytes()


def _check_declared_length(frame: memoryview, header: FrameHeader, digest: str) -> None:
    """Cross-check the header's length with the payload before allocating for it."""
    payload = frame[header.size :]
    declared = header.decoded_length
    if header.codec == CodecId.RAW:
        sizes = [(len(payload), declared)]
    elif header.codec == CodecId.ZSTD:
        sizes = [(zstd.content_size(payload), declared)]
    else:
        planes, plane_length = header.element_size, declared // header.element_size
        sizes, position = [], planes * _PLANE_ENTRY.size
        for index in range(planes):
            if position > len(payload) or index * _PLANE_ENTRY.size + 9 > len(payload):
                break
            codec, stored = _PLANE_ENTRY.unpack_from(payload, index * _PLANE_ENTRY.size)
            body = payload[position : position + stored]
            position += stored
            size = len(body) if codec == CodecId.RAW else zstd.content_size(body)
            sizes.append((size, plane_length))
    for actual, expected in sizes:
        if actual != expected:
            raise IntegrityError(
                f"frame payload holds {actual} bytes where its header declares {expected}",
                digest=digest,
            )


def _encode_part(data: np.ndarray, options: CodecOptions) -> tuple[CodecId, Buffer]:
    if options.codec == "zstd":
        return CodecId.ZSTD, zstd.compress(data, options.zstd_level)
    sample = _sample(data)
    setting, trial = _smaller_setting(sample, options.zstd_level)
    if sample is data:
        payload = trial
    elif len(trial) <= sample.size * (1 - options.min_saving):
        payload = zstd.compress(data, setting)
    else:
        return CodecId.RAW, data
    if len(payload) <= data.size * (1 - options.min_saving):
        return CodecId.ZSTD, payload
    return CodecId.RAW, data


def _sample(data: np.ndarray) -> np.ndarray:
    """A few evenly spaced pieces of a large part (zstd's effect on them predicts the
    whole's at a fraction of the cost), or a small part whole.

    Four 16 KiB pieces: on the planes of real checkpoints (fresh weights, optimizer state,
    sub-deltas) they choose as four 32 KiB pieces did to within 0.001% of the stored
    bytes, at half the cost of the two trials, which on a float32 exponent plane are
    most of the sampling time. Two 16 KiB pieces, or eight of 8 KiB, cost up to 0.3% of
    the raw bytes more.
    """
    if data.size <= _SAMPLES * _SAMPLE_BYTES:
        return data
    step = (data.size - _SAMPLE_BYTES) // (_SAMPLES - 1)
    return np.concatenate([data[i * step : i * step + _SAMPLE_BYTES] for i in range(_SAMPLES)])


def _smaller_setting(sample: np.ndarray, level: int) -> tuple[zstd.Setting, bytes]:
    """The setting that compresses ``sample`` smaller, with its output; ``FAST`` on a tie.

    ``FAST`` wins on most float exponent planes (and is much faster there), ``level``
    where repeats pay off, as in XOR-delta planes whose changes recur.
    """
    fast = zstd.compress(sample, zstd.FAST)
    default = zstd.compress(sample, level)
    return (zstd.FAST, fast) if len(fast) <= len(default) else (level, default)


def _decode_into(
    frame: memoryview, out: np.ndarray, get_base: Callable[[str], bytes] | None
) -> None:
    header = unpack_header(frame)
    _check_decoded_length(header, out)
    payload = frame[header.size :]
    if header.codec == CodecId.RAW:
        _copy_exact(out, payload, "raw frame")
    elif header.codec == CodecId.ZSTD:
        out[:] = np.frombuffer(zstd.decompress(payload, out.size), dtype=np.uint8)
    else:
        _decode_planes(payload, out, header.element_size)
    _apply_delta(header, out, get_base)


def _read_raw_into(blob: BlobReader, header: FrameHeader, out: np.ndarray) -> None:
    """A raw frame's payload straight into ``out``, its length checked before the read."""
    _check_decoded_length(header, out)
    if blob.size - header.size != out.size:
        raise IntegrityError(
            f"raw frame holds {blob.size - header.size} bytes, header says {out.size}"
        )
    blob.read_into(header.size, memoryview(out))


def _check_decoded_length(header: FrameHeader, out: np.ndarray) -> None:
    if header.decoded_length != out.size:
        raise IntegrityError(
            f"frame says {header.decoded_length} decoded bytes, the manifest says {out.size}"
        )


def _apply_delta(
    header: FrameHeader, out: np.ndarray, get_base: Callable[[str], bytes] | None
) -> None:
    """Undo a delta frame's filter in ``out`` against its base; nothing otherwise."""
    if header.base_digest is None:
        return
    if get_base is None:
        raise IntegrityError(f"delta frame needs its base {header.base_digest[:12]}…")
    base = get_base(header.base_digest)
    if header.filters & FilterFlags.SUB_DELTA:
        sub_decode_into(out, base, header.element_size)
    else:
        xor_into(out, base)


def _decode_planes(payload: memoryview, out: np.ndarray, planes: int) -> None:
    table_bytes = planes * _PLANE_ENTRY.size
    if len(payload) < table_bytes:
        raise IntegrityError("planes frame truncated inside its plane table")
    plane_length = out.size // planes
    position = table_bytes
    for index in range(planes):
        codec, stored = _PLANE_ENTRY.unpack_from(payload, index * _PLANE_ENTRY.size)
        if position + stored > len(payload):
            raise IntegrityError(f"plane {index} runs past the end of the frame")
        body = payload[position : position + stored]
        position += stored
        if codec == CodecId.RAW:
            if stored != plane_length:
                raise IntegrityError(f"raw plane {index} holds {stored} bytes, not {plane_length}")
            plane = np.frombuffer(body, dtype=np.uint8)
        elif codec == CodecId.ZSTD:
            plane = np.frombuffer(zstd.decompress(body, plane_length), dtype=np.uint8)
        else:
            raise IntegrityError(f"plane {index} has unknown codec {codec}")
        scatter_plane(out, plane, index, planes)
    if position != len(payload):
        raise IntegrityError(f"planes frame has {len(payload) - position} trailing bytes")


def _copy_exact(out: np.ndarray, payload: memoryview, what: str) -> None:
    if len(payload) != out.size:
        raise IntegrityError(f"{what} holds {len(payload)} bytes, header says {out.size}")
    out[:] = np.frombuffer(payload, dtype=np.uint8)
