"""The frame header: 16 bytes, plus the 32-byte base digest of a delta frame.

```
offset size  field
0      4     magic b"CSTF"
4      1     frame version (1)
5      1     codec: 0 raw, 1 zstd, 2 planes (byte-grouped, a codec per plane)
6      1     filters: bit 0 xor-delta, bit 1 sub-delta (at most one; the base digest follows)
7      1     element size k: the number of planes for codec 2; with sub-delta also the
             width of its elements (1, 2, 4 or 8; 2, 4 or 8 for planes); else 1
8      8     decoded length, unsigned little-endian
16     32    base digest (raw bytes), only when a delta bit is set
```
The payload follows the header and runs to the end of the blob. A planes payload opens
with a table of k entries (u8 plane codec: 0 raw or 1 zstd; u64 stored length), then the
k plane payloads in order; plane j holds byte j of every element.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from castore.errors import FormatError, IntegrityError

__all__ = [
    "DELTA_FILTERS",
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_PLANES",
    "SUB_DELTA_SIZES",
    "CodecId",
    "FilterFlags",
    "FrameHeader",
    "pack_header",
    "unpack_header",
]

FRAME_MAGIC = b"CSTF"
FRAME_VERSION = 1
MAX_PLANES = 16
_FIXED = struct.Struct("<4sBBBBQ")
_BASE_BYTES = 32
# The longest header: the fixed fields and a delta frame's base digest.
MAX_HEADER_BYTES = _FIXED.size + _BASE_BYTES


class CodecId(IntEnum):
    RAW = 0
    ZSTD = 1
    PLANES = 2


class FilterFlags(IntFlag):
    NONE = 0
    XOR_DELTA = 1
    SUB_DELTA = 2


DELTA_FILTERS = FilterFlags.XOR_DELTA | FilterFlags.SUB_DELTA
"""The filters that store a chunk against a base; a frame has at most one of them."""
SUB_DELTA_SIZES = (1, 2, 4, 8)
"""The element widths sub-delta works on (2, 4 and 8 for a planes frame)."""


@dataclass(frozen=True, slots=True)
class FrameHeader:
    codec: CodecId
    filters: FilterFlags
    element_size: int
    decoded_length: int
    base_digest: str | None = None

    @property
    def size(self) -> int:
        """Header length in bytes: where the payload starts."""
        return _FIXED.size + (_BASE_BYTES if self.base_digest is not None else 0)


def pack_header(header: FrameHeader) -> bytes:
    fixed = _FIXED.pack(
        FRAME_MAGIC,
        FRAME_VERSION,
        header.codec,
        header.filters,
        header.element_size,
        header.decoded_length,
    )
    if header.base_digest is None:
        return fixed
    return fixed + bytes.fromhex(header.base_digest)


def unpack_header(frame: bytes | memoryview) -> FrameHeader:
    """Parse and check a header; corruption raises IntegrityError, newer formats FormatError."""
    if len(frame) < _FIXED.size:
        raise IntegrityError(f"frame truncated: {len(frame)} bytes is shorter than a header")
    magic, version, codec, filters, element_size, decoded_length = _FIXED.unpack_from(frame)
    if magic != FRAME_MAGIC:
        raise IntegrityError(f"not a castore frame: magic {bytes(magic)!r}")
    if version != FRAME_VERSION:
        raise FormatError(
            f"frame version {version} is not readable by this castore (reads {FRAME_VERSION}); "
            "upgrade castore"
        )
    if codec not in CodecId.__members__.values():
        raise FormatError(f"unknown frame codec {codec}; upgrade castore")
    if filters & ~int(DELTA_FILTERS) & 0xFF:
        raise FormatError(f"unknown frame filters {filters:#04x}; upgrade castore")
    flags = FilterFlags(filters)
    if flags == DELTA_FILTERS:
        raise IntegrityError("frame sets both the xor-delta and the sub-delta filter")
    _check_element_size(CodecId(codec), flags, element_size, decoded_length)
    base_digest = None
    if flags & DELTA_FILTERS:
        if len(frame) < _FIXED.size + _BASE_BYTES:
            raise IntegrityError("delta frame truncated inside its base digest")
        base_digest = bytes(frame[_FIXED.size : _FIXED.size + _BASE_BYTES]).hex()
    return FrameHeader(CodecId(codec), flags, element_size, decoded_length, base_digest)


def _check_element_size(codec: CodecId, flags: FilterFlags, k: int, length: int) -> None:
    """Byte 7 is the plane count of a planes frame and the element width of sub-delta."""
    if flags & FilterFlags.SUB_DELTA:
        if k not in SUB_DELTA_SIZES or (codec == CodecId.PLANES and k == 1) or length % k:
            raise IntegrityError(
                f"sub-delta over {k}-byte elements is invalid for a {codec.name.lower()} "
                f"frame of {length} bytes"
            )
    elif codec == CodecId.PLANES:
        if not 2 <= k <= MAX_PLANES or length % k:
            raise IntegrityError(f"planes frame of {length} bytes cannot hold {k} planes")
    elif k != 1:
        raise IntegrityError(f"element size {k} is only valid for a planes frame or sub-delta")
