"""auto's per-plane choice between zstd's FAST setting and the configured level.

Each expected payload is made with a plain zstandard compressor, independent of castore,
so a frame built with the other setting fails the byte comparison.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import zstandard

from castore._config import CodecOptions
from castore.codec import CodecId, decode_frame, encode_frame, hash_bytes
from castore.codec import unpack_header as read_header

PLANE_ENTRY = struct.Struct("<BQ")
LEVEL_1 = zstandard.ZstdCompressor(level=1, write_content_size=True)
FAST = zstandard.ZstdCompressor(
    compression_params=zstandard.ZstdCompressionParameters(
        strategy=zstandard.STRATEGY_FAST, hash_log=6, min_match=7, write_content_size=1
    )
)


def normal_weights(elements: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(elements) * 0.02).astype(np.float32).view(np.uint8)


def stored_planes(frame: bytes, header_size: int, k: int = 4) -> list[tuple[int, bytes]]:
    position, planes = header_size + k * PLANE_ENTRY.size, []
    for j in range(k):
        codec, stored = PLANE_ENTRY.unpack_from(frame, header_size + j * PLANE_ENTRY.size)
        planes.append((codec, frame[position : position + stored]))
        position += stored
    assert position == len(frame)
    return planes


# Planes of 16 KiB (their own sample), 96 KiB (sampled since the pieces are 16 KiB) and
# 256 KiB.
@pytest.mark.parametrize("elements", [16 * 1024, 96 * 1024, 256 * 1024])
def test_normal_weights_take_fast_on_the_exponent_plane(elements):
    data = normal_weights(elements)
    frame = encode_frame(data, element_size=4)
    assert read_header(frame).codec == CodecId.PLANES
    planes = stored_planes(frame, 16)
    exponents = data.reshape(-1, 4)[:, 3].copy()
    fast, level_1 = FAST.compress(exponents), LEVEL_1.compress(exponents)
    assert len(fast) < len(level_1)
    assert planes[3] == (CodecId.ZSTD, fast)
    for j in range(3):  # mantissa bytes stay raw
        assert planes[j] == (CodecId.RAW, data.reshape(-1, 4)[:, j].tobytes())
    assert decode_frame(frame, digest=hash_bytes(data)) == data.tobytes()


def test_zero_heavy_delta_planes_keep_the_level():
    # Every 32 elements, 24 unchanged and 8 changed by one of 64 recurring changes: the
    # sub-delta codes are three quarters zeros, with short repeats that level 1 finds and
    # FAST, with its 64-entry hash table, mostly does not.
    rng = np.random.default_rng(1)
    base = normal_weights(256 * 1024, seed=2)
    changes = rng.integers(0, 2**32, size=(64, 8), dtype=np.uint32)
    change = np.zeros((base.size // 4 // 32, 32), dtype=np.uint32)
    change[:, :8] = changes[rng.integers(0, 64, size=change.shape[0])]
    change = change.ravel()  # the zigzag codes; the data is the base plus what they code
    difference = (change >> 1) ^ (0 - (change & 1))
    data = (base.view("<u4") + difference).view(np.uint8)
    frame = encode_frame(
        data, element_size=4, base=base.tobytes(), base_digest=hash_bytes(base.tobytes())
    )
    planes = stored_planes(frame, 48)
    delta = change.view(np.uint8).reshape(-1, 4)
    for j in range(4):
        plane = delta[:, j].copy()
        level_1 = LEVEL_1.compress(plane)
        assert len(level_1) * 2 < len(FAST.compress(plane))
        assert planes[j] == (CodecId.ZSTD, level_1)
    decoded = decode_frame(frame, digest=hash_bytes(data), get_base=lambda _: base.tobytes())
    assert decoded == data.tobytes()


def test_codec_zstd_always_uses_the_level():
    data = normal_weights(256 * 1024)
    planes = stored_planes(encode_frame(data, element_size=4, options=CodecOptions("zstd")), 16)
    for j, (codec, payload) in enumerate(planes):
        assert (codec, payload) == (
            CodecId.ZSTD,
            LEVEL_1.compress(data.reshape(-1, 4)[:, j].copy()),
        )


SAMPLE_PIECE = 16 * 1024


def sample_starts(size: int) -> list[int]:
    """Where auto's four sample pieces of a part of ``size`` bytes start."""
    step = (size - SAMPLE_PIECE) // 3
    return [i * step for i in range(4)]


@pytest.mark.parametrize("element_size", [1, 4])
def test_auto_judges_a_large_part_by_four_16_kib_pieces(element_size):
    # Random bytes exactly where the four 16 KiB pieces fall, zeros everywhere else (the
    # 16 KiB after each piece too, so a longer piece would look compressible): the
    # sample is incompressible, so every plane stays raw and the frame is raw, although
    # the whole would compress well. Zeros in the pieces and random bytes around them:
    # the sample compresses, the whole does not, so the frame is raw again.
    rng = np.random.default_rng(3)
    size = 2 << 20  # the pieces are 3% of it, less than the 5% auto asks zstd to save
    plane = np.zeros(size, dtype=np.uint8)
    for start in sample_starts(size):
        plane[start : start + SAMPLE_PIECE] = rng.integers(0, 256, SAMPLE_PIECE, dtype=np.uint8)
    data = np.repeat(plane, element_size)  # every plane of the elements is that plane
    frame = encode_frame(data, element_size=element_size)
    assert read_header(frame).codec == CodecId.RAW
    assert frame[16:] == data.tobytes()
    assert len(FAST.compress(plane)) < size // 3  # the whole would have compressed

    inverse = np.where(plane == 0, rng.integers(1, 256, size, dtype=np.uint8), 0).astype(np.uint8)
    for start in sample_starts(size):
        inverse[start : start + SAMPLE_PIECE] = 0
    data = np.repeat(inverse, element_size)
    frame = encode_frame(data, element_size=element_size)
    assert read_header(frame).codec == CodecId.RAW
    assert decode_frame(frame, digest=hash_bytes(data)) == data.tobytes()


def test_auto_keeps_the_choice_of_the_level_on_sampled_delta_planes():
    # A sub-delta plane larger than the sample whose changes recur: level 1 wins on the
    # sample and so on the whole; the payload is exactly level 1's.
    rng = np.random.default_rng(4)
    changes = rng.integers(0, 256, size=(32, 24), dtype=np.uint8)
    plane = np.zeros((8192, 64), dtype=np.uint8)
    plane[:, :24] = changes[rng.integers(0, 32, size=plane.shape[0])]
    plane = plane.ravel()
    assert len(LEVEL_1.compress(plane)) * 2 < len(FAST.compress(plane))
    frame = encode_frame(plane)
    assert read_header(frame).codec == CodecId.ZSTD
    assert frame[16:] == LEVEL_1.compress(plane)
    assert decode_frame(frame, digest=hash_bytes(plane)) == plane.tobytes()
