"""Byte planes: the word-shifting split agrees with the definition, byte for byte."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from castore.codec.planes import _BLOCK_BYTES, scatter_plane, split_planes

ELEMENT_SIZES = st.integers(2, 16)


@st.composite
def planar(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Random bytes, a multiple of k long, some spanning several split blocks; some views
    start at an odd address (unaligned words) and some are strided (not contiguous)."""
    k = draw(ELEMENT_SIZES)
    elements = draw(
        st.one_of(
            st.integers(1, 300),
            st.sampled_from([_BLOCK_BYTES // k, _BLOCK_BYTES // k + 1, 3 * _BLOCK_BYTES // k - 5]),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.integers(0, 7))
    step = draw(st.sampled_from([1, 1, 2]))
    backing = rng.integers(0, 256, size=(offset + elements * k) * step, dtype=np.uint8)
    return backing[offset * step :: step], k


@given(planar())
def test_split_planes_holds_byte_j_of_every_element_in_plane_j(case):
    data, k = case
    planes = split_planes(data, k)
    expected = data.reshape(-1, k)
    assert len(planes) == k
    for j, plane in enumerate(planes):
        assert plane.dtype == np.uint8
        assert plane.flags.c_contiguous
        np.testing.assert_array_equal(plane, expected[:, j])


@given(planar())
def test_scatter_inverts_split(case):
    data, k = case
    out = np.zeros(data.size, dtype=np.uint8)
    for j, plane in enumerate(split_planes(data, k)):
        scatter_plane(out, plane, j, k)
    assert out.tobytes() == data.tobytes()


def test_split_reads_little_endian_words_on_any_host():
    # Element 0x04030201 as little-endian bytes 01 02 03 04: plane j holds byte j, j + 1.
    data = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=np.uint8)
    assert [p.tolist() for p in split_planes(data, 4)] == [[1, 5], [2, 6], [3, 7], [4, 8]]
    assert [p.tolist() for p in split_planes(data, 2)] == [[1, 3, 5, 7], [2, 4, 6, 8]]
    assert [p.tolist() for p in split_planes(data, 8)] == [[b] for b in range(1, 9)]
