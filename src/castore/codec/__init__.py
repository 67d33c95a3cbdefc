"""Blob frames: pure bytes in, bytes out. Imports numpy, blake3 and zstandard, never torch."""

from castore.codec.frame import decode_frame, decode_frame_into, encode_frame, encode_frame_parts
from castore.codec.hashing import hash_bytes, verify
from castore.codec.header import (
    FRAME_MAGIC,
    FRAME_VERSION,
    CodecId,
    FilterFlags,
    FrameHeader,
    unpack_header,
)

__all__ = [
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "CodecId",
    "FilterFlags",
    "FrameHeader",
    "decode_frame",
    "decode_frame_into",
    "encode_frame",
    "encode_frame_parts",
    "hash_bytes",
    "unpack_header",
    "verify",
]
