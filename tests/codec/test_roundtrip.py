"""Property: every frame decodes to the bytes it was made from, whatever the codec chain."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from castore._config import CodecOptions
from castore.codec import (
    CodecId,
    FilterFlags,
    decode_frame,
    decode_frame_into,
    encode_frame,
    encode_frame_parts,
    hash_bytes,
)
from castore.codec import unpack_header as read_header
from tests.strategies import FILLS, make_bytes

CODECS = st.sampled_from(["auto", "raw", "zstd"])
ELEMENT_SIZES = st.sampled_from([1, 2, 4, 8])


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    """Small arbitrary bytes, or larger generated ones (random, zeros, ramps, floats)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    # Sizes above 4 x 16 KiB take auto's sampling path.
    size = draw(st.one_of(st.integers(0, 9000), st.sampled_from([131_072, 200_000])))
    return make_bytes(size, draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(FILLS))).tobytes()


def check_header(frame: bytes, data: bytes, codec: str, element_size: int) -> None:
    header = read_header(frame)
    assert header.decoded_length == len(data)
    if codec == "raw" or not data:
        assert header.codec == CodecId.RAW
    elif codec == "zstd":
        planes = element_size > 1 and len(data) % element_size == 0
        assert header.codec == (CodecId.PLANES if planes else CodecId.ZSTD)
    if header.codec == CodecId.PLANES:
        assert header.element_size == element_size
        assert len(data) % element_size == 0
    elif header.filters & FilterFlags.SUB_DELTA:
        assert header.element_size == element_size  # the width of the differences
    else:
        assert header.element_size == 1


def decode_both_ways(frame: bytes, data: bytes, get_base=None) -> None:
    digest = hash_bytes(data)
    assert decode_frame(frame, digest=digest, expected_length=len(data), get_base=get_base) == data
    assert decode_frame(memoryview(frame), digest=digest, get_base=get_base) == data
    out = np.empty(len(data), dtype=np.uint8)
    decode_frame_into(frame, out, digest=digest, get_base=get_base)
    assert out.tobytes() == data


@given(data=chunks(), codec=CODECS, element_size=ELEMENT_SIZES)
def test_decode_inverts_encode(data, codec, element_size):
    options = CodecOptions(codec=codec)
    frame = encode_frame(data, element_size=element_size, options=options)
    check_header(frame, data, codec, element_size)
    assert read_header(frame).base_digest is None
    decode_both_ways(frame, data)
    parts = encode_frame_parts(data, element_size=element_size, options=options)
    assert b"".join(bytes(memoryview(p)) for p in parts) == frame


@given(data=chunks(), codec=CODECS, element_size=ELEMENT_SIZES, edits=st.data())
def test_delta_frames_invert(data, codec, element_size, edits):
    # The base is the data with a few bytes changed, like the same chunk one save earlier.
    base = bytearray(data)
    for index in edits.draw(st.lists(st.integers(0, max(0, len(data) - 1)), max_size=5)):
        if base:
            base[index] ^= 0x5A
    base = bytes(base)
    base_digest = hash_bytes(base)
    frame = encode_frame(
        data,
        element_size=element_size,
        base=base,
        base_digest=base_digest,
        options=CodecOptions(codec=codec),
    )
    check_header(frame, data, codec, element_size)
    header = read_header(frame)
    # Sub-delta wherever the data is whole elements of a width it has; XOR otherwise.
    whole = len(data) % element_size == 0
    assert header.filters == (FilterFlags.SUB_DELTA if whole else FilterFlags.XOR_DELTA)
    assert header.base_digest == base_digest
    calls = []

    def get_base(digest):
        calls.append(digest)
        return base

    decode_both_ways(frame, data, get_base)
    assert calls == [base_digest] * 3


@given(data=chunks(), element_size=ELEMENT_SIZES)
def test_digest_does_not_depend_on_the_codec(data, element_size):
    digest = hash_bytes(data)
    frames = {
        codec: encode_frame(data, element_size=element_size, options=CodecOptions(codec=codec))
        for codec in ("auto", "raw", "zstd")
    }
    for frame in frames.values():
        decoded = decode_frame(frame, digest=digest)
        assert hash_bytes(decoded) == digest
        assert decoded == data
    assert frames["raw"][16:] == data


@given(seed=st.integers(0, 2**32 - 1), element_size=st.sampled_from([2, 4, 8]))
def test_planes_beat_whole_zstd_on_smooth_words(seed, element_size):
    # Words whose high bytes barely change: planes compress better than interleaved bytes.
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 256, size=(4096, element_size), dtype=np.uint8)
    words[:, 1:] = 7
    data = words.tobytes()
    planes = encode_frame(data, element_size=element_size, options=CodecOptions(codec="zstd"))
    whole = encode_frame(data, element_size=1, options=CodecOptions(codec="zstd"))
    assert read_header(planes).codec == CodecId.PLANES
    assert len(planes) < len(whole)
    auto = encode_frame(data, element_size=element_size)
    assert read_header(auto).codec == CodecId.PLANES
    assert len(auto) <= len(planes) + 9  # the noisy plane stays raw, costing nothing
    decode_both_ways(auto, data)


def test_auto_samples_large_chunks():
    # Above 4 x 16 KiB auto decides from samples: random stays raw, zeros compress.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=1 << 18, dtype=np.uint8).tobytes()
    assert read_header(encode_frame(noise)).codec == CodecId.RAW
    assert read_header(encode_frame(noise, element_size=4)).codec == CodecId.RAW
    zeros = bytes(1 << 18)
    frame = encode_frame(zeros, element_size=4)
    assert read_header(frame).codec == CodecId.PLANES
    assert len(frame) < 1000
    assert decode_frame(frame, digest=hash_bytes(zeros)) == zeros


def test_auto_respects_min_saving():
    # Half random, half zeros: zstd saves about half, so it wins at 5% and loses at 90%.
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes() + bytes(4096)
    low = encode_frame(data, options=CodecOptions(min_saving=0.05))
    high = encode_frame(data, options=CodecOptions(min_saving=0.9))
    assert read_header(low).codec == CodecId.ZSTD
    assert read_header(high).codec == CodecId.RAW
