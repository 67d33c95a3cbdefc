"""Delta frames on save: which base each new chunk is XORed against, and the write.

A chunk at the same position as a chunk of the parent checkpoint (same tensor names,
dtypes, shapes and byte ranges) is stored as its XOR against a *keyframe*: the parent's
chunk itself when that was stored whole, else the keyframe the parent's delta used. Every
delta therefore has depth one, so a load decodes at most two frames per chunk however
long the run. When the delta saves too little against a full frame (weights drifted far
from the keyframe), the chunk is stored whole and becomes the next keyframe.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from castore.codec.frame import encode_frame_parts
from castore.codec.header import unpack_header
from castore.snapshot.fetch import fetch_into

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore._config import CodecOptions
    from castore.blobstore.digest import Digest
    from castore.blobstore.store import BlobStore
    from castore.codec.frame import Buffer
    from castore.manifest.records import CheckpointRecord
    from castore.snapshot.chunking import PlannedChunk
    from castore.snapshot.tensors import PlannedEntry

__all__ = [
    "FULL_FRAME_CHECK",
    "Position",
    "chunk_position",
    "keyframe_for",
    "parent_positions",
    "stored_base",
    "write_blob",
]

# A delta larger than this fraction of the raw chunk is compared with a full frame.
FULL_FRAME_CHECK = 0.8
_HEAD_BYTES = 48

Position = tuple[tuple[object, ...], ...]


def chunk_position(chunk: PlannedChunk, entries: Sequence[PlannedEntry]) -> Position:
    return tuple(
        (
            entries[p.entry].name,
            entries[p.entry].dtype,
            entries[p.entry].shape,
            p.start,
            p.length,
            p.offset,
        )
        for p in chunk.pieces
    )


def parent_positions(parent: CheckpointRecord) -> dict[Position, tuple[str, str | None]]:
    """The parent's chunks by position, as (digest, base): the delta candidates.

    A chunk that is one piece of one tensor is its own position. The pieces of a pack
    are gathered by digest and ordered by their offset in the blob, as the chunk plan
    orders them (large tensors' chunks may sit between a pack's pieces in the manifest).
    """
    positions: dict[Position, tuple[str, str | None]] = {}
    packs: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    pack_bases: dict[str, str | None] = {}
    for ref in parent.tensors:
        start = 0
        for chunk in ref.chunks:
            piece = (ref.name, ref.dtype, ref.shape, start, chunk.length, chunk.offset)
            if chunk.offset == 0 and chunk.length == chunk.blob_length:
                positions[(piece,)] = (chunk.digest, chunk.base)
            else:
                packs[chunk.digest].append(piece)
                pack_bases[chunk.digest] = chunk.base
            start += chunk.length
    for digest, pieces in packs.items():
        position = tuple(sorted(pieces, key=lambda piece: piece[5]))  # type: ignore[arg-type, return-value]
        positions[position] = (digest, pack_bases[digest])
    return positions


def keyframe_for(position: Position, parent: dict[Position, tuple[str, str | None]]) -> str | None:
    """The keyframe a chunk at ``position`` may be XORed against, if any."""
    found = parent.get(position)
    if found is None:
        return None
    digest, base = found
    return base or digest


def write_blob(
    blobs: BlobStore,
    digest: Digest,
    chunk: PlannedChunk,
    data: memoryview | bytes,
    keyframe: str | None,
    options: CodecOptions,
) -> tuple[int, str | None]:
    """Encode and put one blob; return its frame size and the base it was XORed against."""
    full: list[Buffer] | None = None
    parts: list[Buffer] | None = None
    if keyframe is not None and options.delta and options.codec != "raw":
        base = np.empty(chunk.length, dtype=np.uint8)
        fetch_into(blobs, keyframe, base)  # type: ignore[arg-type]
        parts = encode_frame_parts(
            data, element_size=chunk.element_size, base=base, base_digest=keyframe, options=options
        )
        if _size(parts) > chunk.length * FULL_FRAME_CHECK:
            full = encode_frame_parts(data, element_size=chunk.element_size, options=options)
            if _size(full) < _size(parts):
                parts, keyframe = full, None
    else:
        keyframe = None
    if parts is None:
        parts = encode_frame_parts(data, element_size=chunk.element_size, options=options)
    blobs.put(digest, parts)
    return _size(parts), keyframe


def stored_base(blobs: BlobStore, digest: Digest) -> str | None:
    """The base of a frame already in the store, from its header (one ranged read)."""
    return unpack_header(blobs.get_head(digest, _HEAD_BYTES)).base_digest


def _size(parts: Sequence[Buffer]) -> int:
    return sum(memoryview(part).nbytes for part in parts)
