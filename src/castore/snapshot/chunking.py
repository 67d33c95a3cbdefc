"""Chunk plans: which bytes of which entries make up each blob.

Entries of at least ``pack_below_bytes`` are cut at fixed ``chunk_bytes`` offsets, so an
unchanged range of a tensor dedups exactly and no rolling hash is needed (tensor bytes
never shift). Smaller entries are packed, in order, into blobs of up to ``chunk_bytes``;
a pack is also closed where the entries' unit (``pack_unit``: a numbered block such as
``model.layers.3``, else the module) changes, once it holds ``pack_split_bytes`` (by
default ``pack_below_bytes``), so a block that did not change (a frozen layer of a
fine-tune) keeps packs of its own, which dedup exactly, instead of sharing one with a
block that trained.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore._config import ChunkingOptions

__all__ = ["ChunkPlan", "Piece", "PlannedChunk", "chunk_data", "pack_unit", "plan_chunks"]


@dataclass(frozen=True, slots=True)
class Piece:
    """``length`` bytes of entry ``entry`` starting at ``start``, at ``offset`` in the blob."""

    entry: int
    start: int
    length: int
    offset: int


@dataclass(frozen=True, slots=True)
class PlannedChunk:
    pieces: tuple[Piece, ...]
    length: int
    element_size: int


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    chunks: tuple[PlannedChunk, ...]

    @property
    def total_bytes(self) -> int:
        return sum(chunk.length for chunk in self.chunks)


def pack_unit(name: str) -> str:
    """The unit whose small entries share packs: the name up to its first index component
    before the last (``model.layers.3.attn.norm.weight`` -> ``model.layers.3``,
    ``optimizer.state.7.exp_avg`` -> ``optimizer.state.7``), else its module, the name up
    to its last dot (``model.head.bias`` -> ``model.head``; ``bias`` -> ``""``)."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isascii() and part.isdigit():
            return ".".join(parts[: i + 1])
    return name.rpartition(".")[0]


def plan_chunks(
    sizes: Sequence[int],
    element_sizes: Sequence[int],
    options: ChunkingOptions,
    names: Sequence[str] | None = None,
) -> ChunkPlan:
    """Plan blobs for data entries of the given byte ``sizes`` (0 for entries without data).

    ``names`` (the entries' names) close a pack where ``pack_unit`` changes, once it holds
    at least ``options.pack_split``; without them packs are filled in order.
    """
    chunks: list[PlannedChunk] = []
    pack: list[Piece] = []
    pack_length = 0
    pack_unit_name: str | None = None

    def flush_pack() -> None:
        nonlocal pack, pack_length
        if pack:
            chunks.append(
                PlannedChunk(tuple(pack), pack_length, _pack_element_size(pack, element_sizes))
            )
            pack, pack_length = [], 0

    for index, size in enumerate(sizes):
        if size == 0:
            continue
        if size >= options.pack_below_bytes:
            for start in range(0, size, options.chunk_bytes):
                length = min(options.chunk_bytes, size - start)
                chunks.append(
                    PlannedChunk((Piece(index, start, length, 0),), length, element_sizes[index])
                )
            continue
        unit = pack_unit(names[index]) if names is not None else None
        if pack_length + size > options.chunk_bytes or (
            unit != pack_unit_name and pack_length >= options.pack_split
        ):
            flush_pack()
        pack.append(Piece(index, 0, size, pack_length))
        pack_length += size
        pack_unit_name = unit
    flush_pack()
    return ChunkPlan(tuple(chunks))


def _pack_element_size(pack: Sequence[Piece], element_sizes: Sequence[int]) -> int:
    """The element size a pack is encoded with (its byte planes): the one most of its bytes
    have, where every piece is a whole number of such elements (so each stays aligned to
    them: an int64 counter in a float32 pack is two 4-byte elements); else the next most
    common that fits, else 1."""
    by_width: Counter[int] = Counter()
    for piece in pack:
        by_width[element_sizes[piece.entry]] += piece.length
    if len(by_width) == 1:
        return next(iter(by_width))
    for width, _ in by_width.most_common():
        if all(piece.length % width == 0 for piece in pack):
            return width
    return 1


def chunk_data(chunk: PlannedChunk, entry_bytes: Sequence[memoryview | None]) -> memoryview | bytes:
    """The chunk's decoded bytes: a zero-copy view for a plain chunk, a join for a pack."""
    if len(chunk.pieces) == 1:
        piece = chunk.pieces[0]
        source = entry_bytes[piece.entry]
        assert source is not None
        return source[piece.start : piece.start + piece.length]
    return b"".join(
        entry_bytes[piece.entry][piece.start : piece.start + piece.length]  # type: ignore[index]
        for piece in chunk.pieces
    )
