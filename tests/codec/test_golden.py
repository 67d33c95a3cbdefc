"""Golden frame bytes: the on-disk format pinned byte for byte (docs/format.md, header.py).

A change here is a format change: it needs a new frame version, not an updated constant.
zstd payload bytes depend on the zstd library version, so for zstd frames the header (and
a planes frame's table) is pinned exactly and each payload is checked with a plain zstd
decoder, independent of castore.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard

from castore._config import CodecOptions
from castore.codec import (
    FRAME_MAGIC,
    FRAME_VERSION,
    CodecId,
    FilterFlags,
    FrameHeader,
    decode_frame,
    decode_frame_into,
    encode_frame,
    encode_frame_parts,
    hash_bytes,
)
from castore.codec import unpack_header as read_header
from castore.codec.header import pack_header

RAW = CodecOptions(codec="raw")
ZSTD = CodecOptions(codec="zstd")
PLANE_ENTRY = struct.Struct("<BQ")

# BLAKE3-256 test vectors (the reference implementation's), pinned independently of castore.
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
BLAKE3_ABC = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"


def plain_zstd(payload: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(payload)


def test_constants():
    assert FRAME_MAGIC == b"CSTF"
    assert FRAME_VERSION == 1
    assert [int(c) for c in (CodecId.RAW, CodecId.ZSTD, CodecId.PLANES)] == [0, 1, 2]
    assert int(FilterFlags.XOR_DELTA) == 1
    assert int(FilterFlags.SUB_DELTA) == 2


def test_digest_is_blake3_256_lowercase_hex():
    assert hash_bytes(b"") == BLAKE3_EMPTY
    assert hash_bytes(b"abc") == BLAKE3_ABC
    assert hash_bytes(memoryview(b"abc")) == BLAKE3_ABC


def test_raw_frame_bytes():
    frame = encode_frame(b"abc", options=RAW)
    assert frame == bytes.fromhex("43535446 01 00 00 01 0300000000000000") + b"abc"
    assert decode_frame(frame, digest=BLAKE3_ABC) == b"abc"


def test_empty_frames_are_bare_raw_headers():
    for options in (RAW, ZSTD, CodecOptions()):
        frame = encode_frame(b"", element_size=4, options=options)
        assert frame == bytes.fromhex("43535446 01 00 00 01 0000000000000000")
    assert decode_frame(frame, digest=BLAKE3_EMPTY, expected_length=0) == b""


def test_auto_keeps_incompressible_bytes_raw():
    data = bytes(range(7))
    assert encode_frame(data) == encode_frame(data, options=RAW)


def test_zstd_frame_header_and_payload():
    data = bytes(64)
    frame = encode_frame(data, options=ZSTD)
    assert frame[:16] == bytes.fromhex("43535446 01 01 00 01 4000000000000000")
    payload = frame[16:]
    assert payload[:4] == bytes.fromhex("28b52ffd")  # one standard zstd frame
    assert zstandard.get_frame_parameters(payload).content_size == 64
    assert plain_zstd(payload) == data
    assert decode_frame(frame, digest=hash_bytes(data)) == data


def test_auto_compresses_zeros_whole_for_single_byte_elements():
    data = bytes(4096)
    frame = encode_frame(data)
    assert frame[:16] == bytes.fromhex("43535446 01 01 00 01 0010000000000000")
    assert len(frame) < 100


def test_planes_frame_bytes():
    # Sixteen little-endian uint32: plane 0 holds the low bytes, planes 1-3 are zero.
    data = np.arange(16, dtype="<u4").tobytes()
    frame = encode_frame(data, element_size=4, options=ZSTD)
    assert frame[:16] == bytes.fromhex("43535446 01 02 00 04 4000000000000000")
    table = [PLANE_ENTRY.unpack_from(frame, 16 + 9 * j) for j in range(4)]
    assert [codec for codec, _ in table] == [1, 1, 1, 1]
    position, planes = 16 + 36, []
    for _, stored in table:
        planes.append(plain_zstd(frame[position : position + stored]))
        position += stored
    assert position == len(frame)  # nothing after the planes
    assert planes == [bytes(range(16)), bytes(16), bytes(16), bytes(16)]
    assert decode_frame(frame, digest=hash_bytes(data)) == data


def test_auto_planes_keep_incompressible_planes_raw():
    rng = np.random.default_rng(7)
    words = np.empty((4096, 2), dtype=np.uint8)
    words[:, 0] = rng.integers(0, 256, size=4096)  # noisy low bytes: stay raw
    words[:, 1] = 0x3F  # constant high bytes: zstd
    data = words.tobytes()
    frame = encode_frame(data, element_size=2)
    assert frame[:16] == bytes.fromhex("43535446 01 02 00 02 0020000000000000")
    codec0, stored0 = PLANE_ENTRY.unpack_from(frame, 16)
    codec1, stored1 = PLANE_ENTRY.unpack_from(frame, 25)
    assert (codec0, stored0) == (0, 4096)
    assert codec1 == 1
    assert frame[34 : 34 + 4096] == words[:, 0].tobytes()
    assert plain_zstd(frame[34 + 4096 :]) == bytes([0x3F]) * 4096
    assert len(frame) == 34 + 4096 + stored1
    assert decode_frame(frame, digest=hash_bytes(data)) == data


def test_auto_planes_that_all_stay_raw_make_a_raw_frame():
    data = np.random.default_rng(3).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    assert encode_frame(data, element_size=4) == encode_frame(data, options=RAW)


def test_element_size_not_dividing_the_length_compresses_whole():
    frame = encode_frame(bytes(10), element_size=4, options=ZSTD)
    assert frame[:16] == bytes.fromhex("43535446 01 01 00 01 0a00000000000000")


def test_raw_frames_are_never_split_into_planes():
    data = np.arange(16, dtype="<u4").tobytes()
    frame = encode_frame(data, element_size=4, options=RAW)
    assert frame == bytes.fromhex("43535446 01 00 00 01 4000000000000000") + data


def test_raw_delta_frame_bytes():
    # Byte elements (k = 1): 0xFF - 5 is -6 modulo 256, zigzag-coded as 11.
    base = bytes(range(32))
    data = bytearray(base)
    data[5] = 0xFF
    base_digest = hash_bytes(base)
    frame = encode_frame(bytes(data), base=base, base_digest=base_digest, options=RAW)
    assert frame == (
        bytes.fromhex("43535446 01 00 02 01 2000000000000000")
        + bytes.fromhex(base_digest)
        + bytes(5)
        + bytes([11])
        + bytes(26)
    )
    header = read_header(frame)
    assert header == FrameHeader(CodecId.RAW, FilterFlags.SUB_DELTA, 1, 32, base_digest)
    assert header.size == 48
    got = decode_frame(frame, digest=hash_bytes(bytes(data)), get_base={base_digest: base}.get)
    assert got == bytes(data)


def test_raw_sub_delta_words():
    # k = 4 differences +1, -1, -2**31 (wrapping) and +2**31 - 1: codes 2, 1, 2**32 - 1, 2**32 - 2.
    base = struct.pack("<4I", 7, 7, 0x8000_0000, 0)
    data = struct.pack("<4I", 8, 6, 0, 0x7FFF_FFFF)
    base_digest = hash_bytes(base)
    frame = encode_frame(data, element_size=4, base=base, base_digest=base_digest, options=RAW)
    assert frame == (
        bytes.fromhex("43535446 01 00 02 04 1000000000000000")
        + bytes.fromhex(base_digest)
        + struct.pack("<4I", 2, 1, 0xFFFF_FFFF, 0xFFFF_FFFE)
    )
    assert decode_frame(frame, digest=hash_bytes(data), get_base=lambda _: base) == data


def test_raw_xor_delta_frame_bytes():
    # 3-byte elements have no sub-delta width: the writer XORs, and byte 7 stays 1.
    base = bytes(range(32))
    data = bytearray(base)
    data[5] = 0xFF
    base_digest = hash_bytes(base)
    frame = encode_frame(
        bytes(data), element_size=3, base=base, base_digest=base_digest, options=RAW
    )
    assert frame == (
        bytes.fromhex("43535446 01 00 01 01 2000000000000000")
        + bytes.fromhex(base_digest)
        + bytes(5)
        + bytes([5 ^ 0xFF])
        + bytes(26)
    )
    header = read_header(frame)
    assert header == FrameHeader(CodecId.RAW, FilterFlags.XOR_DELTA, 1, 32, base_digest)
    got = decode_frame(frame, digest=hash_bytes(bytes(data)), get_base={base_digest: base}.get)
    assert got == bytes(data)


def test_planes_delta_frame_bytes():
    base = np.arange(64, dtype="<f4").tobytes()
    data = np.arange(64, dtype="<f4")
    data[3] = -1.0
    base_digest = hash_bytes(base)
    frame = encode_frame(
        data.tobytes(), element_size=4, base=base, base_digest=base_digest, options=ZSTD
    )
    assert frame[:16] == bytes.fromhex("43535446 01 02 02 04 0001000000000000")
    assert frame[16:48] == bytes.fromhex(base_digest)
    # Only element 3 differs: -1.0 (0xBF800000) - 3.0 (0x40400000) = 0x7F400000 > 0.
    codes = np.zeros(64, dtype="<u4")
    codes[3] = 2 * 0x7F40_0000
    stored = codes.view(np.uint8)
    position = 48 + 36
    for j in range(4):
        codec, size = PLANE_ENTRY.unpack_from(frame, 48 + 9 * j)
        assert codec == 1
        assert plain_zstd(frame[position : position + size]) == stored[j::4].tobytes()
        position += size
    assert position == len(frame)


def test_base_digest_without_base_is_ignored():
    frame = encode_frame(b"abc", base_digest=BLAKE3_EMPTY, options=RAW)
    assert frame == encode_frame(b"abc", options=RAW)


def test_delta_needs_base_digest():
    with pytest.raises(ValueError, match="a delta frame needs base_digest"):
        encode_frame(b"abc", base=b"xyz")


@pytest.mark.parametrize(
    ("kwargs", "count"),
    [
        ({"options": RAW}, 2),
        ({"options": ZSTD}, 2),
        ({"element_size": 4, "options": ZSTD}, 2 + 4),
        ({"element_size": 8, "options": ZSTD}, 2 + 8),
    ],
)
def test_frame_parts_join_to_the_frame(kwargs, count):
    data = np.arange(64, dtype="<u8").tobytes()
    parts = encode_frame_parts(data, **kwargs)
    assert len(parts) == count
    assert b"".join(bytes(memoryview(p)) for p in parts) == encode_frame(data, **kwargs)


def test_decode_into_writes_exactly_its_buffer():
    data = np.arange(16, dtype="<u4").tobytes()
    frame = encode_frame(data, element_size=4, options=ZSTD)
    target = np.full(100, 0xAA, dtype=np.uint8)
    decode_frame_into(frame, target[10:74], digest=hash_bytes(data))
    assert target[10:74].tobytes() == data
    assert set(target[:10]) == {0xAA}
    assert set(target[74:]) == {0xAA}


@pytest.mark.parametrize(
    ("header", "packed"),
    [
        (FrameHeader(CodecId.RAW, FilterFlags.NONE, 1, 0), "43535446 01 00 00 01 0000000000000000"),
        (
            FrameHeader(CodecId.PLANES, FilterFlags.NONE, 8, 2**40 + 8),
            "43535446 01 02 00 08 0800000000010000",
        ),
        (
            FrameHeader(CodecId.RAW, FilterFlags.XOR_DELTA, 1, 1, "ab" * 32),
            "43535446 01 00 01 01 0100000000000000" + "ab" * 32,
        ),
        (
            FrameHeader(CodecId.ZSTD, FilterFlags.SUB_DELTA, 8, 16, "cd" * 32),
            "43535446 01 01 02 08 1000000000000000" + "cd" * 32,
        ),
        (
            FrameHeader(CodecId.PLANES, FilterFlags.SUB_DELTA, 2, 4, "ef" * 32),
            "43535446 01 02 02 02 0400000000000000" + "ef" * 32,
        ),
    ],
)
def test_header_pack_unpack(header, packed):
    raw = bytes.fromhex(packed)
    assert pack_header(header) == raw
    assert read_header(raw) == header
    assert header.size == len(raw)
    assert struct.unpack_from("<Q", raw, 8)[0] == header.decoded_length
