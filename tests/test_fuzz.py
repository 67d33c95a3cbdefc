"""Fuzzing the two parsers of stored bytes: frames and manifest parts.

Whatever the bytes, decoding raises only castore errors (never another exception, a
hang, or an allocation a forged length asks for) and never returns bytes that do not
match the digest.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore.codec import decode_frame, decode_frame_into, encode_frame, hash_bytes
from castore.codec.header import FRAME_MAGIC
from castore.errors import CastoreError
from castore.manifest.records import record_from_table

DATA = bytes(range(256)) * 8
DIGEST = hash_bytes(DATA)
BASE = bytes(range(1, 256)) * 8 + bytes(8)
FRAMES = [
    encode_frame(DATA),
    encode_frame(DATA, element_size=4),
    encode_frame(DATA, element_size=4, base=BASE, base_digest=hash_bytes(BASE)),  # sub-delta
]


def get_base(digest: str) -> bytes:
    """Any base digest, even a mutated one, gets BASE: the digest check still holds."""
    return BASE


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_decode_to_anything_but_castore_errors(frame):
    with pytest.raises(CastoreError):
        decode_frame(frame, digest=DIGEST, get_base=get_base)


@given(
    st.sampled_from(FRAMES),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 4096),
)
def test_mutated_frames_decode_exactly_or_raise_castore_errors(frame, edits, cut):
    mutated = bytearray(frame[: max(cut, 16)])
    for position, value in edits:
        if position < len(mutated):
            mutated[position] = value
    out = np.empty(len(DATA), dtype=np.uint8)
    try:
        decode_frame_into(bytes(mutated), out, digest=DIGEST, get_base=get_base)
    except CastoreError:
        return
    assert out.tobytes() == DATA


@given(st.binary(min_size=8, max_size=8))
def test_forged_lengths_never_drive_allocation(length):
    frame = bytearray(FRAMES[1])
    frame[8:16] = length
    with pytest.raises(CastoreError):
        decode_frame(bytes(frame), digest=DIGEST)
    assert bytes(frame[:4]) == FRAME_MAGIC


ROW = st.fixed_dictionaries(
    {
        "run": st.one_of(st.text(max_size=8), st.none()),
        "epoch": st.one_of(st.integers(-5, 5), st.none()),
        "format_version": st.one_of(st.integers(-1, 3), st.none()),
        "skeleton": st.one_of(st.text(max_size=20), st.none()),
        "tensors": st.one_of(st.none(), st.just([]), st.just([{"name": "x"}])),
    }
)


@given(ROW)
def test_malformed_manifest_rows_raise_castore_errors(row):
    table = pa.Table.from_pylist([row])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    parsed = pq.read_table(pa.BufferReader(buffer.getvalue()))
    with pytest.raises(CastoreError):
        record_from_table(parsed)
