"""Chunk plans: fixed offsets for large entries, packs for small ones, nothing for empty."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore._config import ChunkingOptions
from castore.snapshot.chunking import Piece, PlannedChunk, chunk_data, pack_unit, plan_chunks

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
    odd = plan_chunks([3, 5], [1, 4], OPTIONS)  # 5 bytes are no whole 4-byte elements
    assert odd.chunks[0].element_size == 1


def test_a_mixed_pack_takes_the_width_of_most_of_its_bytes_that_fits_every_piece():
    # float32 norms with an int64 counter: the counter is two 4-byte elements.
    assert plan_chunks([16, 8, 16], [4, 8, 4], OPTIONS).chunks[0].element_size == 4
    # int64 has most bytes but the 4-byte piece is no whole int64: next most common.
    assert plan_chunks([16, 4, 8], [8, 4, 8], OPTIONS).chunks[0].element_size == 4
    # bfloat16 pieces of odd element counts keep a float32 pack at 2 bytes.
    assert plan_chunks([8, 8, 6], [4, 4, 2], OPTIONS).chunks[0].element_size == 2
    # a tie goes to the width met first.
    assert plan_chunks([8, 8], [8, 4], OPTIONS).chunks[0].element_size == 8


@pytest.mark.parametrize(
    ("name", "unit"),
    [
        ("model.layers.3.attn.norm.weight", "model.layers.3"),
        ("optimizer.state.7.exp_avg", "optimizer.state.7"),
        ("model.head.bias", "model.head"),
        ("model.blocks.0", "model.blocks"),  # a list of tensors: the index is the leaf
        ("bias", ""),
        ("encoder.x1.2b.weight", "encoder.x1.2b"),
    ],
)
def test_pack_unit(name, unit):
    assert pack_unit(name) == unit


SPLIT = ChunkingOptions(chunk_bytes=100, pack_below_bytes=40, pack_split_bytes=20)


def test_packs_close_where_the_unit_changes():
    names = ["b.0.ln.w", "b.0.ln.b", "b.0.fc.b", "b.1.ln.w", "b.1.ln.b", "head.b"]
    plan = plan_chunks([12, 12, 8, 12, 12, 4], [4] * 6, SPLIT, names=names)
    assert [[p.entry for p in c.pieces] for c in plan.chunks] == [[0, 1, 2], [3, 4], [5]]
    assert [c.length for c in plan.chunks] == [32, 24, 4]
    # Without names packs fill in order, as they always did.
    assert len(plan_chunks([12, 12, 8, 12, 12, 4], [4] * 6, SPLIT).chunks) == 1


def test_units_below_pack_split_bytes_share_a_pack():
    names = ["b.0.ln.w", "b.1.ln.w", "b.2.ln.w", "b.3.ln.w", "b.4.ln.w"]
    plan = plan_chunks([8, 8, 8, 8, 30], [4] * 5, SPLIT, names=names)
    # 8 bytes < 20: b.1 joins; 16 < 20: b.2 joins; 24 >= 20: b.3 starts a pack, which
    # holds 8 bytes when b.4 comes, so b.4 joins it.
    assert [[p.entry for p in c.pieces] for c in plan.chunks] == [[0, 1, 2], [3, 4]]


def test_a_frozen_unit_keeps_its_packs_whatever_the_units_around_it_hold():
    names = ["emb.w", "b.0.a", "b.0.b", "b.1.a", "b.1.b", "head.w"]
    sizes = [30, 20, 20, 20, 20, 30]
    before = plan_chunks(sizes, [4] * 6, SPLIT, names=names)
    grown = plan_chunks([38, 20, 20, 20, 20, 38], [4] * 6, SPLIT, names=names)
    pieces = lambda plan: [[(p.entry, p.length) for p in c.pieces] for c in plan.chunks]  # noqa: E731
    assert pieces(before)[1:3] == pieces(grown)[1:3] == [[(1, 20), (2, 20)], [(3, 20), (4, 20)]]
    # Filled in order, both blocks would share a pack with the embedding.
    assert [p.entry for p in plan_chunks(sizes, [4] * 6, SPLIT).chunks[0].pieces] == [0, 1, 2, 3]


def test_pack_split_bytes_defaults_to_pack_below_bytes():
    options = ChunkingOptions(chunk_bytes=100, pack_below_bytes=40)
    assert options.pack_split_bytes is None
    assert options.pack_split == 40
    names = ["b.0.w", "b.0.b", "b.1.w", "b.2.w", "b.3.w"]
    plan = plan_chunks([30, 10, 30, 20, 20], [4] * 5, options, names=names)
    # b.0 holds 40 bytes: it closes; b.1 holds 30 < 40: b.2 joins, then 50 >= 40.
    assert [[p.entry for p in c.pieces] for c in plan.chunks] == [[0, 1], [2, 3], [4]]


def test_pack_split_bytes_of_chunk_bytes_fills_packs_in_order():
    names = ["b.0.w", "b.1.w", "b.2.w"]
    options = ChunkingOptions(chunk_bytes=100, pack_below_bytes=40, pack_split_bytes=100)
    assert len(plan_chunks([30, 30, 30], [4] * 3, options, names=names).chunks) == 1
    zero = ChunkingOptions(chunk_bytes=100, pack_below_bytes=40, pack_split_bytes=0)
    assert len(plan_chunks([30, 30, 30], [4] * 3, zero, names=names).chunks) == 3


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
    with pytest.raises(ValueError, match="pack_split_bytes must be non-negative, got -1"):
        ChunkingOptions(pack_split_bytes=-1)


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
    split = data.draw(st.integers(0, chunk_bytes + 1))
    names = data.draw(
        st.lists(
            st.sampled_from(["a.0.w", "a.0.b", "a.1.w", "c.w", "c.b", "w"]),
            min_size=len(sizes),
            max_size=len(sizes),
        )
    )
    options = ChunkingOptions(
        chunk_bytes=chunk_bytes, pack_below_bytes=pack_below, pack_split_bytes=split
    )
    plan = plan_chunks(sizes, widths, options, names=names)
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
            for before, after in itertools.pairwise(chunk.pieces):
                # a pack goes on into another unit only while it is below pack_split_bytes
                if pack_unit(names[before.entry]) != pack_unit(names[after.entry]):
                    assert after.offset < split
        if len({widths[p.entry] for p in chunk.pieces}) > 1:  # each piece whole elements
            assert all(p.length % chunk.element_size == 0 for p in chunk.pieces)
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
