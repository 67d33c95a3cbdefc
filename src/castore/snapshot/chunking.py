"""Chunk plans: which bytes of which entries make up each blob.

Entries of at least ``pack_below_bytes`` are cut at fixed ``chunk_bytes`` offsets, so an
unchanged range of a tensor dedups exactly and no rolling hash is needed (tensor bytes
never shift). Smaller entries are packed, in order, into blobs of up to ``chunk_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore._config import ChunkingOptions

__all__ = ["ChunkPlan", "Piece", "PlannedChunk", "chunk_data", "plan_chunks"]


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


def plan_chunks(
    sizes: Sequence[int], element_sizes: Sequence[int], options: ChunkingOptions
) -> ChunkPlan:
    """Plan blobs for data entries of the given byte ``sizes`` (0 for entries without data)."""
    chunks: list[PlannedChunk] = []
    pack: list[Piece] = []
    pack_length = 0

    def flush_pack() -> None:
        nonlocal pack, pack_length
        if pack:
            widths = {element_sizes[piece.entry] for piece in pack}
            chunks.append(
                PlannedChunk(tuple(pack), pack_length, widths.pop() if len(widths) == 1 else 1)
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
        if pack_length + size > options.chunk_bytes:
            flush_pack()
        pack.append(Piece(index, 0, size, pack_length))
        pack_length += size
    flush_pack()
    return ChunkPlan(tuple(chunks))


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
