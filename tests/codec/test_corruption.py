"""Corrupt frames: decoding raises IntegrityError or FormatError, never returns wrong bytes.

Every bit and every byte of small frames of each kind is flipped, through every decoder
(``decode_frame``, ``decode_frame_into``, and ``decode_blob_into``, the one loads use,
which reads a raw payload straight into its output); truncations, trailing bytes, wrong
lengths, wrong bases and forged sizes are tried one by one.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import zstandard

from castore._config import CodecOptions
from castore.blobstore.reader import BufferReader
from castore.codec import decode_frame, decode_frame_into, encode_frame, hash_bytes
from castore.codec import unpack_header as read_header
from castore.codec.frame import decode_blob_into
from castore.codec.header import CodecId, FilterFlags, FrameHeader, pack_header
from castore.errors import BlobNotFoundError, FormatError, IntegrityError

DATA = np.arange(16, dtype="<u4").tobytes()  # 64 bytes of 4-byte words, compressible
DIGEST = hash_bytes(DATA)
BASE = bytes((i * 7) % 256 for i in range(64))
BASE_DIGEST = hash_bytes(BASE)
PLANE_ENTRY = struct.Struct("<BQ")

# Low bytes noisy (a raw plane), high bytes constant (zstd planes): a mixed planes frame.
_WORDS = np.random.default_rng(5).integers(0, 256, size=(64, 4), dtype=np.uint8)
_WORDS[:, 1:] = 0x3F
MIXED = _WORDS.tobytes()

KINDS = {
    "raw": (DATA, {"options": CodecOptions(codec="raw")}),
    "zstd": (DATA, {"options": CodecOptions(codec="zstd")}),
    "planes": (DATA, {"element_size": 4, "options": CodecOptions(codec="zstd")}),
    "planes-mixed": (MIXED, {"element_size": 4}),
    "raw-delta": (
        DATA,
        {"base": BASE, "base_digest": BASE_DIGEST, "options": CodecOptions(codec="raw")},
    ),
    "planes-delta": (
        DATA,
        {
            "element_size": 4,
            "base": BASE,
            "base_digest": BASE_DIGEST,
            "options": CodecOptions(codec="zstd"),
        },
    ),
    # 4-byte sub-delta codes stored raw (header byte 7 is 4 in a raw frame).
    "raw-delta-4": (
        DATA,
        {
            "element_size": 4,
            "base": BASE,
            "base_digest": BASE_DIGEST,
            "options": CodecOptions(codec="raw"),
        },
    ),
    # 3-byte elements fall back to xor-delta.
    "raw-xor": (
        DATA,
        {
            "element_size": 3,
            "base": BASE,
            "base_digest": BASE_DIGEST,
            "options": CodecOptions(codec="raw"),
        },
    ),
}
BASE_DIGEST_BYTES = range(16, 48)  # where a delta frame's base digest lies
FILTER_BYTE = 6
DECODERS = ["decode_frame", "decode_frame_into", "decode_blob_into"]


def frame_of(kind: str) -> tuple[bytes, bytes]:
    data, kwargs = KINDS[kind]
    return encode_frame(data, **kwargs), data


def get_base(digest: str) -> bytes:
    """A store holding only BASE: any other digest is missing, as in a real load."""
    if digest == BASE_DIGEST:
        return BASE
    raise BlobNotFoundError(f"blob {digest[:12]} is missing", digest=digest)


def decode_into(decoder: str, frame: bytes, out: np.ndarray, digest: str) -> None:
    """``decode_frame_into``, or ``decode_blob_into`` from a reader over the frame."""
    if decoder == "decode_blob_into":
        decode_blob_into(BufferReader(frame), out, digest=digest, get_base=get_base)
    else:
        decode_frame_into(frame, out, digest=digest, get_base=get_base)


def decode(frame: bytes, data: bytes, decoder: str) -> bytes:
    digest = hash_bytes(data)
    if decoder == "decode_frame":
        return decode_frame(frame, digest=digest, get_base=get_base)
    out = np.empty(len(data), dtype=np.uint8)
    decode_into(decoder, frame, out, digest)
    return out.tobytes()


def decode_or_none(frame: bytes, data: bytes, decoder: str, position: int) -> bytes | None:
    """Decoded bytes, or None when decoding failed with an error castore may raise."""
    try:
        return decode(frame, data, decoder)
    except (IntegrityError, FormatError):
        return None
    except BlobNotFoundError:
        # A changed base digest names another blob; the store reports it missing.
        assert read_header(frame).base_digest is not None
        assert position in BASE_DIGEST_BYTES
        return None


def test_kinds_are_what_they_claim():
    headers = {kind: read_header(frame_of(kind)[0]) for kind in KINDS}
    assert {kind: (h.codec, h.filters, h.element_size) for kind, h in headers.items()} == {
        "raw": (CodecId.RAW, FilterFlags.NONE, 1),
        "zstd": (CodecId.ZSTD, FilterFlags.NONE, 1),
        "planes": (CodecId.PLANES, FilterFlags.NONE, 4),
        "planes-mixed": (CodecId.PLANES, FilterFlags.NONE, 4),
        "raw-delta": (CodecId.RAW, FilterFlags.SUB_DELTA, 1),
        "planes-delta": (CodecId.PLANES, FilterFlags.SUB_DELTA, 4),
        "raw-delta-4": (CodecId.RAW, FilterFlags.SUB_DELTA, 4),
        "raw-xor": (CodecId.RAW, FilterFlags.XOR_DELTA, 1),
    }
    frame, _ = frame_of("planes-mixed")
    assert [PLANE_ENTRY.unpack_from(frame, 16 + 9 * j)[0] for j in range(4)] == [0, 1, 1, 1]
    for kind in KINDS:
        frame, data = frame_of(kind)
        for decoder in DECODERS:
            assert decode(frame, data, decoder) == data


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_bit_flips_never_yield_wrong_bytes(kind, decoder):
    frame, data = frame_of(kind)
    header = read_header(frame)
    undetected = set()
    for position in range(len(frame)):
        for bit in range(8):
            corrupt = bytearray(frame)
            corrupt[position] ^= 1 << bit
            got = decode_or_none(bytes(corrupt), data, decoder, position)
            if got is not None:
                assert got == data, f"flip of bit {bit} at byte {position} decoded wrong bytes"
                undetected.add(position)
    # castore's header, raw bytes and plane tables catch every flip; zstd payloads have a
    # few don't-care bits of their own, which the digest check makes harmless.
    assert {p for p in undetected if p < header.size} == set()
    if header.codec == CodecId.RAW:
        assert undetected == set()
    if header.codec == CodecId.PLANES:
        table = range(header.size, header.size + 9 * header.element_size)
        assert not undetected & set(table)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_byte_flip_is_detected(kind, decoder):
    frame, data = frame_of(kind)
    undetected = []
    for position in range(len(frame)):
        corrupt = bytearray(frame)
        corrupt[position] ^= 0xFF
        if decode_or_none(bytes(corrupt), data, decoder, position) is not None:
            undetected.append(position)
    assert undetected == []


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_truncation_is_integrity_error(kind, decoder):
    frame, data = frame_of(kind)
    for cut in range(len(frame)):
        with pytest.raises(IntegrityError):
            decode(frame[:cut], data, decoder)


def test_truncation_messages():
    frame, _ = frame_of("raw")
    with pytest.raises(IntegrityError, match=r"^frame truncated: 15 bytes is shorter than a"):
        decode_frame(frame[:15], digest=DIGEST)
    frame, _ = frame_of("raw-delta")
    with pytest.raises(IntegrityError, match="delta frame truncated inside its base digest"):
        decode_frame(frame[:40], digest=DIGEST)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "zstd"])
def test_trailing_bytes_are_integrity_errors(kind):
    frame, data = frame_of(kind)
    for decoder in DECODERS:
        with pytest.raises(IntegrityError, match=r"trailing bytes|holds \d+ bytes"):
            decode(frame + b"junk", data, decoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_bytes_after_a_zstd_frame_are_integrity_errors(decoder):
    frame, data = frame_of("zstd")
    with pytest.raises(IntegrityError):
        decode(frame + b"junk", data, decoder)


@pytest.mark.parametrize("decoder", DECODERS)
def test_bytes_after_a_zstd_plane_are_integrity_errors(decoder):
    frame, data = frame_of("planes")
    entries = [PLANE_ENTRY.unpack_from(frame, 16 + 9 * j) for j in range(4)]
    table = b"".join(
        PLANE_ENTRY.pack(codec, stored + (4 if j == 3 else 0))
        for j, (codec, stored) in enumerate(entries)
    )
    forged = frame[:16] + table + frame[16 + 36 :] + b"junk"
    with pytest.raises(IntegrityError):
        decode(forged, data, decoder)


@pytest.mark.parametrize("kind", list(KINDS))
def test_wrong_expected_length(kind):
    frame, data = frame_of(kind)
    digest = hash_bytes(data)
    n = len(data)
    message = rf"^frame says {n} decoded bytes, the manifest says {n - 1} \[blob="
    with pytest.raises(IntegrityError, match=message) as info:
        decode_frame(frame, digest=digest, expected_length=n - 1, get_base=get_base)
    assert info.value.digest == digest
    for decoder in DECODERS[1:]:
        with pytest.raises(IntegrityError, match=message):
            decode_into(decoder, frame, np.empty(n - 1, np.uint8), digest)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", ["raw", "planes"])
def test_wrong_digest_message(decoder, kind):
    frame, _ = frame_of(kind)
    other = hash_bytes(b"other")

    def attempt() -> None:
        if decoder == "decode_frame":
            decode_frame(frame, digest=other)
        else:
            decode_into(decoder, frame, np.empty(64, np.uint8), other)

    with pytest.raises(IntegrityError) as info:
        attempt()
    assert str(info.value) == (
        f"blob {other[:12]} decoded to {DIGEST[:12]}; the stored frame is corrupt. "
        f"Run 'castore verify' to list the affected checkpoints [blob={other[:12]}…]"
    )
    assert info.value.digest == other


@pytest.mark.parametrize("kind", ["raw-delta", "planes-delta", "raw-delta-4", "raw-xor"])
def test_wrong_base_bytes(kind):
    frame, _ = frame_of(kind)
    wrong = bytes(reversed(BASE))
    with pytest.raises(IntegrityError, match="the stored frame is corrupt"):
        decode_frame(frame, digest=DIGEST, get_base=lambda _: wrong)
    with pytest.raises(IntegrityError, match="delta base has 63 bytes, the chunk has 64"):
        decode_frame(frame, digest=DIGEST, get_base=lambda _: BASE[:63])
    with pytest.raises(IntegrityError, match=f"delta frame needs its base {BASE_DIGEST[:12]}"):
        decode_frame(frame, digest=DIGEST)


def test_get_base_errors_propagate():
    frame, _ = frame_of("raw-delta")
    with pytest.raises(BlobNotFoundError) as info:
        decode_frame(frame, digest=DIGEST, get_base=lambda d: get_base(d[::-1]))
    assert info.value.digest == BASE_DIGEST[::-1]


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


@pytest.mark.parametrize("expected_length", [None, 2**60])
@pytest.mark.parametrize("codec", [CodecId.RAW, CodecId.ZSTD, CodecId.PLANES])
def test_forged_huge_decoded_length_does_not_allocate(codec, expected_length):
    if codec == CodecId.PLANES:
        payload = PLANE_ENTRY.pack(0, 32) + PLANE_ENTRY.pack(0, 32) + DATA
        header = FrameHeader(codec, FilterFlags.NONE, 2, 2**60)
    else:
        payload = DATA if codec == CodecId.RAW else _zstd(DATA)
        header = FrameHeader(codec, FilterFlags.NONE, 1, 2**60)
    started = time.perf_counter()
    with pytest.raises(IntegrityError, match=r"holds (32|64) bytes where its header declares"):
        decode_frame(pack_header(header) + payload, digest=DIGEST, expected_length=expected_length)
    assert time.perf_counter() - started < 1.0


def test_decoded_length_beyond_ssize_t_is_integrity_error():
    frame = bytearray(frame_of("zstd")[0])
    frame[15] ^= 0x80  # decoded length 2**63 + 64
    with pytest.raises(IntegrityError):
        decode_frame(bytes(frame), digest=DIGEST)
    for decoder in DECODERS[1:]:
        with pytest.raises(IntegrityError):
            decode_into(decoder, bytes(frame), np.empty(64, np.uint8), DIGEST)


def test_manifest_length_is_checked_before_decompression():
    frame = pack_header(FrameHeader(CodecId.ZSTD, FilterFlags.NONE, 1, 2**60)) + b"garbage"
    with pytest.raises(IntegrityError, match=r"^frame says 1152921504606846976 decoded bytes"):
        decode_frame(frame, digest=DIGEST, expected_length=64)


def _forged_content_size(payload: bytes, size: int) -> bytes:
    """``payload`` (a single-segment zstd frame with a 1-byte size) declaring ``size``."""
    assert payload[4] == 0x20
    forged = payload[:4] + bytes([0xE0]) + struct.pack("<Q", size) + payload[6:]
    assert zstandard.get_frame_parameters(forged).content_size == size
    return forged


def forged_zstd_frame() -> bytes:
    payload = _forged_content_size(_zstd(DATA), 2**60)
    return pack_header(FrameHeader(CodecId.ZSTD, FilterFlags.NONE, 1, 64)) + payload


def forged_planes_frame() -> bytes:
    plane = _forged_content_size(_zstd(DATA[:32]), 2**60)
    table = PLANE_ENTRY.pack(1, len(plane)) + PLANE_ENTRY.pack(0, 32)
    header = pack_header(FrameHeader(CodecId.PLANES, FilterFlags.NONE, 2, 64))
    return header + table + plane + DATA[32:]


@pytest.mark.parametrize("make", [forged_zstd_frame, forged_planes_frame])
def test_forged_zstd_content_size_is_caught_by_decode_frame(make):
    with pytest.raises(IntegrityError, match="holds 1152921504606846976 bytes where its header"):
        decode_frame(make(), digest=DIGEST, expected_length=64)


@pytest.mark.parametrize("make", [forged_zstd_frame, forged_planes_frame])
@pytest.mark.parametrize("decoder", DECODERS[1:])
def test_forged_zstd_content_size_is_caught_by_decoding_into(make, decoder):
    with pytest.raises(IntegrityError, match="zstd payload declares 1152921504606846976 decoded"):
        decode_into(decoder, make(), np.empty(64, np.uint8), DIGEST)


def _with_byte(frame: bytes, position: int, value: int) -> bytes:
    corrupt = bytearray(frame)
    corrupt[position] = value
    return bytes(corrupt)


def test_bad_magic_is_integrity_error():
    frame = b"X" + frame_of("raw")[0][1:]
    with pytest.raises(IntegrityError, match=r"^not a castore frame: magic b'XSTF'"):
        decode_frame(frame, digest=DIGEST)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_frame_version_is_format_error(version):
    frame = _with_byte(frame_of("raw")[0], 4, version)
    with pytest.raises(
        FormatError,
        match=rf"^frame version {version} is not readable by this castore \(reads 1\); "
        "upgrade castore",
    ):
        decode_frame(frame, digest=DIGEST)


@pytest.mark.parametrize("codec", [3, 4, 255])
def test_unknown_codec_is_format_error(codec):
    frame = _with_byte(frame_of("raw")[0], 5, codec)
    with pytest.raises(FormatError, match=rf"^unknown frame codec {codec}; upgrade castore"):
        decode_frame(frame, digest=DIGEST)


@pytest.mark.parametrize("bit", [2, 3, 7])
def test_unknown_filter_bits_are_format_errors(bit):
    frame = _with_byte(frame_of("raw")[0], FILTER_BYTE, 1 << bit)
    with pytest.raises(FormatError, match=rf"^unknown frame filters {1 << bit:#04x}; upgrade"):
        decode_frame(frame, digest=DIGEST)


@pytest.mark.parametrize("element_size", [0, 2, 4, 255])
def test_element_size_is_one_outside_planes_frames(element_size):
    frame = _with_byte(frame_of("raw")[0], 7, element_size)
    with pytest.raises(
        IntegrityError, match=rf"^element size {element_size} is only valid for a planes frame"
    ):
        decode_frame(frame, digest=DIGEST)


@pytest.mark.parametrize(("element_size", "length"), [(0, 64), (1, 64), (4, 63), (3, 64), (2, 1)])
def test_planes_need_a_whole_number_of_elements(element_size, length):
    frame = pack_header(FrameHeader(CodecId.PLANES, FilterFlags.NONE, element_size, length))
    with pytest.raises(
        IntegrityError, match=rf"^planes frame of {length} bytes cannot hold {element_size} planes"
    ):
        decode_frame(frame, digest=DIGEST)


def test_planes_frames_have_at_most_sixteen_planes():
    table = b"".join(PLANE_ENTRY.pack(0, 2) for _ in range(32))
    data = bytes(64)
    frame = pack_header(FrameHeader(CodecId.PLANES, FilterFlags.NONE, 32, 64)) + table + data
    with pytest.raises(IntegrityError, match=r"^planes frame of 64 bytes cannot hold 32 planes"):
        decode_frame(frame, digest=hash_bytes(data))


def _planes_frame(entries: list[tuple[int, int]], body: bytes) -> bytes:
    header = pack_header(FrameHeader(CodecId.PLANES, FilterFlags.NONE, len(entries), 64))
    return header + b"".join(PLANE_ENTRY.pack(*entry) for entry in entries) + body


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_planes_frame([(0, 32), (0, 32)], b"")[:30], "truncated inside its plane table"),
        (_planes_frame([(0, 32), (0, 32)], DATA[:40]), "plane 1 runs past the end of the frame"),
        (_planes_frame([(0, 31), (0, 33)], DATA), "raw plane 0 holds 31 bytes, not 32"),
        (_planes_frame([(0, 32), (7, 32)], DATA), "plane 1 has unknown codec 7"),
        (_planes_frame([(0, 32), (0, 32)], DATA + b"!"), "planes frame has 1 trailing bytes"),
        (_planes_frame([(0, 32), (1, 32)], DATA), "zstd payload declares -1 decoded bytes"),
    ],
)
def test_planes_table_corruption_messages(frame, message):
    with pytest.raises(IntegrityError, match=message):
        decode_frame_into(frame, np.empty(64, np.uint8), digest=DIGEST)
    with pytest.raises(IntegrityError):
        decode_frame(frame, digest=DIGEST)
