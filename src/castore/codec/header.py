"""The frame header: 16 bytes, plus the 32-byte base digest of a delta frame.

```
offset size  field
0      4     magic b"CSTF"
4      1     frame version (1)
5      1     codec: 0 raw, 1 zstd, 2 planes (byte-grouped, a codec per plane)
6      1     filters: bit 0 xor-delta (the base digest follows)
7      1     element size k: the number of planes for codec 2, else 1
8      8     decoded length, unsigned little-endian
16     32    base digest (raw bytes), only when the xor-delta bit is set
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
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "MAX_PLANES",
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


class CodecId(IntEnum):
    RAW = 0
    ZSTD = 1
    PLANES = 2


class FilterFlags(IntFlag):
    NONE = 0
    XOR_DELTA = 1


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
    if filters & ~int(FilterFlags.XOR_DELTA) & 0xFF:
        raise FormatError(f"unknown frame filters {filters:#04x}; upgrade castore")
    if codec == CodecId.PLANES:
        if not 2 <= element_size <= MAX_PLANES or decoded_length % element_size:
            raise IntegrityError(
                f"planes frame of {decoded_length} bytes cannot hold {element_size} planes"
            )
    elif element_size != 1:
        raise IntegrityError(f"element size {element_size} is only valid for a planes frame")
    flags = FilterFlags(filters)
    base_digest = None
    if flags & FilterFlags.XOR_DELTA:
        if len(frame) < _FIXED.size + _BASE_BYTES:
            raise IntegrityError("delta frame truncated inside its base digest")
        base_digest = bytes(frame[_FIXED.size : _FIXED.size + _BASE_BYTES]).hex()
    return FrameHeader(CodecId(codec), flags, element_size, decoded_length, base_digest)
