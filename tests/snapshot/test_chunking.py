"""Chunk plans: fixed offsets for large entries, packs for small ones, nothing for empty."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore._config import ChunkingOptions
from castore.snapshot.chunking import Piece, PlannedChunk, chunk_data, plan_chunks

OPTIONS = ChunkingOptions(chunk_bytes=100, pack_below_bytes=40)


def test_large_entries_are_cut_at_fixed_offsets():
    plan = plan_chunks([250], [4], OPTIONS)
    assert plan.chunks == (
        PlannedChunk((Piece(0, 0, 100, 0),), 100, 4),
        PlannedChunk((Piece(0, 100, 100, 0),), 100, 4),
        PlannedChunk((Piece(0, 200, 50, 0),), 50, 4),
    )
    assert plan.total_bytes == 250


def test_an_exact_multiple_has_no_empty_tail():
    plan = plan_chunks([200], [1], OPTIONS)
    assert [c.length for c in plan.chunks] == [100, 100]


def test_the_pack_threshold_is_inclusive_for_chunking():
    plan = plan_chunks([40, 39, 39], [2, 2, 2], OPTIONS)
    assert plan.chunks == (
        PlannedChunk((Piece(0, 0, 40, 0),), 40, 2),
        PlannedChunk((Piece(1, 0, 39, 0), Piece(2, 0, 39, 39)), 78, 2),
    )


def test_small_entries_pack_up_to_chunk_bytes():
    plan = plan_chunks([30, 30, 30, 10, 1], [4, 4, 4, 4, 4], OPTIONS)
    assert plan.chunks == (
        PlannedChunk(
            (Piece(0, 0, 30, 0), Piece(1, 0, 30, 30), Piece(2, 0, 30, 60), Piece(3, 0, 10, 90)),
            100,
            4,
        ),
        PlannedChunk((Piece(4, 0, 1, 0),), 1, 4),
    )


def test_packs_keep_entry_order_around_large_entries():
    plan = plan_chunks([10, 150, 20], [1, 1, 1], OPTIONS)
    assert plan.chunks == (
        PlannedChunk((Piece(1, 0, 100, 0),), 100, 1),
        PlannedChunk((Piece(1, 100, 50, 0),), 50, 1),
        PlannedChunk((Piece(0, 0, 10, 0), Piece(2, 0, 20, 10)), 30, 1),
    )


def test_empty_entries_get_no_chunks():
    plan = plan_chunks([0, 0, 8, 0], [4, 8, 2, 1], OPTIONS)
    assert plan.chunks == (PlannedChunk((Piece(2, 0, 8, 0),), 8, 2),)
    assert plan_chunks([], [], OPTIONS).chunks == ()
    assert plan_chunks([0], [4], OPTIONS).total_bytes == 0


def test_pack_element_size_is_shared_or_one():
    same = plan_chunks([8, 8], [8, 8], OPTIONS)
    assert same.chunks[0].element_size == 8
    mixed = plan_chunks([8, 8, 2], [8, 4, 2], OPTIONS)
    assert len(mixed.chunks) == 1
    assert mixed.chunks[0].element_size == 1


def test_pack_below_zero_chunks_everything():
    plan = plan_chunks([3, 5], [1, 1], ChunkingOptions(chunk_bytes=4, pack_below_bytes=0))
    assert [(c.pieces[0].entry, c.pieces[0].start, c.length) for c in plan.chunks] == [
        (0, 0, 3),
        (1, 0, 4),
        (1, 4, 1),
    ]


@pytest.mark.parametrize(
    ("chunk_bytes", "pack_below_bytes", "message"),
    [
        (0, 0, "chunk_bytes must be positive, got 0"),
        (10, 11, r"pack_below_bytes must be within \[0, chunk_bytes=10\], got 11"),
        (10, -1, r"pack_below_bytes must be within \[0, chunk_bytes=10\], got -1"),
    ],
)
def test_chunking_options_are_checked(chunk_bytes, pack_below_bytes, message):
    with pytest.raises(ValueError, match=message):
        ChunkingOptions(chunk_bytes=chunk_bytes, pack_below_bytes=pack_below_bytes)


def test_chunk_data():
    entries = [memoryview(b"abcdef"), None, memoryview(b"XYZ")]
    plan = plan_chunks([6, 0, 3], [1, 1, 1], ChunkingOptions(chunk_bytes=4, pack_below_bytes=4))
    data = [bytes(chunk_data(chunk, entries)) for chunk in plan.chunks]
    assert data == [b"abcd", b"ef", b"XYZ"]
    single = chunk_data(plan.chunks[0], entries)
    assert isinstance(single, memoryview)  # zero-copy for a plain chunk


@given(
    sizes=st.lists(st.integers(0, 700), max_size=12),
    chunk_bytes=st.integers(1, 300),
    data=st.data(),
)
def test_plans_cover_every_byte_once(sizes, chunk_bytes, data):
    pack_below = data.draw(st.integers(0, chunk_bytes))
    widths = data.draw(
        st.lists(st.sampled_from([1, 2, 4, 8]), min_size=len(sizes), max_size=len(sizes))
    )
    options = ChunkingOptions(chunk_bytes=chunk_bytes, pack_below_bytes=pack_below)
    plan = plan_chunks(sizes, widths, options)
    covered: dict[int, list[tuple[int, int]]] = {}
    for chunk in plan.chunks:
        assert 0 < chunk.length <= chunk_bytes
        assert chunk.length == sum(p.length for p in chunk.pieces)
        offset = 0
        for piece in chunk.pieces:
            assert piece.offset == offset
            offset += piece.length
            covered.setdefault(piece.entry, []).append((piece.start, piece.length))
        if len(chunk.pieces) > 1:
            assert all(sizes[p.entry] < pack_below for p in chunk.pieces)
    for entry, size in enumerate(sizes):
        ranges = sorted(covered.get(entry, []))
        position = 0
        for start, length in ranges:
            assert start == position
            position += length
        assert position == size
        if size >= pack_below and size:
            assert [start for start, _ in ranges] == list(range(0, size, chunk_bytes))
    assert plan.total_bytes == sum(sizes)
    # Fed the same bytes, the chunks concatenate back to every entry.
    payloads = [
        memoryview(bytes([i % 256]) * size) if size else None for i, size in enumerate(sizes)
    ]
    rebuilt = [bytearray() for _ in sizes]
    for chunk in plan.chunks:
        blob = bytes(chunk_data(chunk, payloads))
        for piece in chunk.pieces:
            rebuilt[piece.entry] += blob[piece.offset : piece.offset + piece.length]
    assert [bytes(r) for r in rebuilt] == [bytes(p) if p is not None else b"" for p in payloads]
