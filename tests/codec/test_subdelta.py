"""Sub-delta (filter bit 1): zigzag differences of k-byte elements against a base.

Every expected code is computed here with Python integers, independent of castore's
numpy arithmetic, so the two implementations must agree bit for bit.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from castore._config import CodecOptions
from castore.blobstore.reader import BufferReader
from castore.codec import CodecId, FilterFlags, FrameHeader, encode_frame, hash_bytes
from castore.codec import unpack_header as read_header
from castore.codec.frame import decode_blob_into, decode_frame, decode_frame_into
from castore.codec.header import pack_header
from castore.codec.subdelta import sub_decode_into, sub_encode
from castore.errors import FormatError, IntegrityError

SIZES = st.sampled_from([1, 2, 4, 8])
RAW = CodecOptions(codec="raw")
ZSTD = CodecOptions(codec="zstd")
BASE_DIGEST = "cd" * 32
PLANE_ENTRY = struct.Struct("<BQ")


def zigzag(data: bytes, base: bytes, k: int) -> bytes:
    """The format's sub-delta codes, element by element, in Python integers."""
    bits, out = 8 * k, bytearray()
    for i in range(0, len(data), k):
        x = int.from_bytes(data[i : i + k], "little")
        b = int.from_bytes(base[i : i + k], "little")
        d = (x - b) % (1 << bits)
        d -= (1 << bits) if d >> (bits - 1) else 0  # read as signed
        out += (2 * d if d >= 0 else -2 * d - 1).to_bytes(k, "little")
    return bytes(out)


def element_values(k: int) -> st.SearchStrategy[int]:
    top = (1 << (8 * k)) - 1
    return st.one_of(st.integers(0, top), st.sampled_from([0, 1, top, top >> 1, (top >> 1) + 1]))


@st.composite
def pairs(draw: st.DrawFn) -> tuple[bytes, bytes, int]:
    """(data, base, k): random or extreme bases; data far from them or a small step away."""
    k = draw(SIZES)
    count = draw(st.integers(0, 40))
    mask = (1 << (8 * k)) - 1
    base = draw(st.lists(element_values(k), min_size=count, max_size=count))
    steps = st.one_of(st.integers(-4, 4), st.integers(-(1 << 20), 1 << 20))
    near = [(b + draw(steps)) & mask for b in base]
    data = draw(
        st.one_of(st.just(near), st.lists(element_values(k), min_size=count, max_size=count))
    )

    def pack(values: list[int]) -> bytes:
        return b"".join(v.to_bytes(k, "little") for v in values)

    return pack(data), pack(base), k


def decode_all_ways(frame: bytes, data: bytes, base: bytes) -> None:
    """decode_frame, decode_frame_into and decode_blob_into all give back ``data``."""
    digest, header = hash_bytes(data), read_header(frame)

    def get_base(wanted: str) -> bytes:
        assert wanted == header.base_digest
        return base

    assert decode_frame(frame, digest=digest, get_base=get_base) == data
    out = np.empty(len(data), dtype=np.uint8)
    decode_frame_into(frame, out, digest=digest, get_base=get_base)
    assert out.tobytes() == data
    out[:] = 0
    decode_blob_into(BufferReader(frame), out, digest=digest, get_base=get_base)
    assert out.tobytes() == data


@given(pairs())
def test_codes_match_the_format_and_invert(pair):
    data, base, k = pair
    codes = sub_encode(np.frombuffer(data, np.uint8), base, k)
    assert codes.dtype == np.uint8
    assert codes.tobytes() == zigzag(data, base, k)
    sub_decode_into(codes, base, k)
    assert codes.tobytes() == data


@given(pairs(), st.sampled_from(["auto", "raw", "zstd"]))
def test_frames_round_trip(pair, codec):
    data, base, k = pair
    frame = encode_frame(
        data, element_size=k, base=base, base_digest=hash_bytes(base), options=CodecOptions(codec)
    )
    header = read_header(frame)
    assert header.filters == FilterFlags.SUB_DELTA
    assert header.element_size == k
    assert header.base_digest == hash_bytes(base)
    decode_all_ways(frame, data, base)


def special_bits(dtype: str) -> np.ndarray:
    """Bit patterns of a type's edge values: signed zeros, infinities, NaN payloads, limits."""
    k = np.dtype(dtype).itemsize
    word = f"<u{k}"
    if np.dtype(dtype).kind == "f":
        info = np.finfo(dtype)
        specials = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, info.max, info.min, info.tiny, 1.0]
        bits = np.array(specials, dtype=dtype).view(word)
        top = 1 << (8 * k - 1)
        # A quiet NaN with a payload, a signalling NaN, the smallest denormals of each sign.
        extra = [int(bits[4]) | 1, int(bits[2]) | 1, 1, top | 1]
        return np.concatenate([bits, np.array(extra, dtype=word)])
    info = np.iinfo(dtype)
    values = [info.min, info.max, 0, 1, info.min + 1, info.max - 1]
    return np.array(values, dtype=dtype).view(word)


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", "<i1", "<i2", "<i4", "<i8", "<u8"])
def test_special_values_round_trip_bit_exactly(dtype):
    values = special_bits(dtype)
    k = values.itemsize
    for base in (values, values[::-1].copy(), ~values, np.zeros_like(values)):
        data, base_bytes = values.tobytes(), base.tobytes()
        assert sub_encode(values.view(np.uint8), base_bytes, k).tobytes() == zigzag(
            data, base_bytes, k
        )
        for codec in (RAW, ZSTD, CodecOptions()):
            frame = encode_frame(
                data, element_size=k, base=base_bytes, base_digest=BASE_DIGEST, options=codec
            )
            assert frame[6] == FilterFlags.SUB_DELTA
            decode_all_ways(frame, data, base_bytes)


def test_sign_flips_and_wraparound_code_small():
    # int64 max -> min is +1 modulo 2**64; a float sign flip is one bit 63 change.
    base = np.array([2**63 - 1, 5, 0], dtype="<u8")
    data = np.array([2**63, 4, 2**63], dtype="<u8")
    codes = sub_encode(data.view(np.uint8), base.tobytes(), 8).view("<u8")
    assert codes.tolist() == [2, 1, 2**64 - 1]  # +1, -1, -2**63
    floats = np.array([1.5, -0.0], dtype="<f4")
    flipped = -floats
    frame = encode_frame(
        flipped.tobytes(), element_size=4, base=floats.tobytes(), base_digest=BASE_DIGEST
    )
    decode_all_ways(frame, flipped.tobytes(), floats.tobytes())


def test_unaligned_buffers_decode():
    data = np.arange(1, 33, dtype="<u4").tobytes()
    base = np.arange(32, dtype="<u4").tobytes()
    frame = encode_frame(data, element_size=4, base=base, base_digest=BASE_DIGEST, options=RAW)
    target = np.full(len(data) + 3, 0xAA, dtype=np.uint8)
    decode_frame_into(frame, target[1:-2], digest=hash_bytes(data), get_base=lambda _: base)
    assert target[1:-2].tobytes() == data
    assert (target[0], target[-2], target[-1]) == (0xAA, 0xAA, 0xAA)


def test_drifting_float32_gets_sub_delta_and_beats_xor():
    # Weights after an optimizer step: each changes by a tiny relative amount, so its
    # mantissa difference carries across bits that XOR would all flip.
    rng = np.random.default_rng(7)
    base = (rng.standard_normal(1 << 18) * 0.02).astype("<f4")
    data = base * (1 + rng.standard_normal(base.size).astype("<f4") * 1e-4)
    data[rng.integers(0, base.size, 100)] *= -1  # and a few sign flips
    frame = encode_frame(
        data.tobytes(), element_size=4, base=base.tobytes(), base_digest=BASE_DIGEST
    )
    assert (frame[6], frame[7]) == (FilterFlags.SUB_DELTA, 4)
    assert read_header(frame).codec == CodecId.PLANES
    xor = np.bitwise_xor(data.view("<u4"), base.view("<u4"))
    xor_frame_size = len(encode_frame(xor.tobytes(), element_size=4)) + 32  # + base digest
    assert len(frame) < 0.97 * xor_frame_size
    decode_all_ways(frame, data.tobytes(), base.tobytes())


@pytest.mark.parametrize(("element_size", "length"), [(3, 12), (16, 64), (4, 6), (2, 7)])
def test_other_widths_fall_back_to_xor(element_size, length):
    data, base = bytes(range(length)), bytes(reversed(range(length)))
    frame = encode_frame(data, element_size=element_size, base=base, base_digest=BASE_DIGEST)
    assert frame[6] == FilterFlags.XOR_DELTA
    decode_all_ways(frame, data, base)


def test_hand_made_frames_of_every_codec_decode():
    # The writer never makes a zstd (codec 1) frame with k > 1; the format allows it.
    data = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype="<u4").tobytes()
    base = np.array([2, 7, 1, 8, 2, 8, 1, 8], dtype="<u4").tobytes()
    codes = zigzag(data, base, 4)
    head = pack_header(FrameHeader(CodecId.RAW, FilterFlags.SUB_DELTA, 4, 32, BASE_DIGEST))
    assert head[6:8] == bytes([2, 4])
    decode_all_ways(head + codes, data, base)
    compressed = zstandard.ZstdCompressor(write_content_size=True).compress(codes)
    head = pack_header(FrameHeader(CodecId.ZSTD, FilterFlags.SUB_DELTA, 4, 32, BASE_DIGEST))
    decode_all_ways(head + compressed, data, base)
    head = pack_header(FrameHeader(CodecId.PLANES, FilterFlags.SUB_DELTA, 4, 32, BASE_DIGEST))
    table = b"".join(PLANE_ENTRY.pack(0, 8) for _ in range(4))
    planes = b"".join(codes[j::4] for j in range(4))
    decode_all_ways(head + table + planes, data, base)


def forged(codec: int, filters: int, k: int, length: int = 64) -> bytes:
    return struct.pack("<4sBBBBQ", b"CSTF", 1, codec, filters, k, length) + bytes.fromhex(
        BASE_DIGEST
    )


@pytest.mark.parametrize(
    ("codec", "k", "length"),
    [
        (0, 0, 64),
        (0, 3, 63),
        (0, 16, 64),
        (0, 4, 62),  # not a whole number of elements
        (1, 8, 60),
        (1, 255, 64),
        (2, 1, 64),  # planes need at least 2
        (2, 3, 63),
        (2, 16, 64),  # a valid plane count, not a sub-delta width
        (2, 8, 60),
    ],
)
def test_forged_sub_delta_widths_are_integrity_errors(codec, k, length):
    frame = forged(codec, FilterFlags.SUB_DELTA, k, length)
    with pytest.raises(IntegrityError, match=rf"^sub-delta over {k}-byte elements is invalid"):
        read_header(frame)
    with pytest.raises(IntegrityError):
        decode_frame(frame, digest=BASE_DIGEST, get_base=lambda _: bytes(length))


@pytest.mark.parametrize(("codec", "k"), [(0, 1), (0, 2), (0, 8), (1, 1), (1, 4), (2, 2), (2, 8)])
def test_valid_sub_delta_widths_parse(codec, k):
    header = read_header(forged(codec, FilterFlags.SUB_DELTA, k))
    assert (header.filters, header.element_size, header.base_digest) == (2, k, BASE_DIGEST)
    assert header.size == 48


@pytest.mark.parametrize("codec", [0, 1, 2])
def test_both_delta_bits_are_integrity_errors(codec):
    frame = forged(codec, 0b11, 4)
    with pytest.raises(IntegrityError, match="both the xor-delta and the sub-delta filter"):
        read_header(frame)
    with pytest.raises(IntegrityError):
        decode_frame(frame, digest=BASE_DIGEST, get_base=lambda _: bytes(64))


@pytest.mark.parametrize("k", [2, 4, 8])
def test_xor_frames_keep_element_size_one(k):
    with pytest.raises(IntegrityError, match=rf"^element size {k} is only valid for a planes"):
        read_header(forged(0, FilterFlags.XOR_DELTA, k))


def test_higher_filter_bits_are_still_format_errors():
    with pytest.raises(FormatError, match=r"^unknown frame filters 0x06"):
        read_header(forged(0, 0b110, 1))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_sub_delta_needs_a_base_of_the_same_length(k):
    data = bytes(range(64))
    frame = encode_frame(data, element_size=k, base=bytes(64), base_digest=BASE_DIGEST, options=RAW)
    with pytest.raises(IntegrityError, match="delta base has 56 bytes, the chunk has 64"):
        decode_frame(frame, digest=hash_bytes(data), get_base=lambda _: bytes(56))
    with pytest.raises(IntegrityError, match="delta frame needs its base"):
        decode_frame(frame, digest=hash_bytes(data))
    with pytest.raises(IntegrityError, match="delta base has 8 bytes, the chunk has 64"):
        encode_frame(data, element_size=k, base=bytes(8), base_digest=BASE_DIGEST)
