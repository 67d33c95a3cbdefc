"""Blob frames: pure bytes in, bytes out. Imports numpy, blake3 and zstandard, never torch."""

from castore.codec.frame import decode_frame, encode_frame, read_header
from castore.codec.hashing import hash_bytes, verify
from castore.codec.header import FRAME_MAGIC, FRAME_VERSION, CodecId, FilterFlags, FrameHeader

__all__ = [
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "CodecId",
    "FilterFlags",
    "FrameHeader",
    "decode_frame",
    "encode_frame",
    "hash_bytes",
    "read_header",
    "verify",
]
