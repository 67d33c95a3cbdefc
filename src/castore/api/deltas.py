"""Delta frames on save: which base each new chunk is a delta against, and the write.

A chunk at the same position as a chunk of the parent checkpoint (same tensor names,
dtypes, shapes and byte ranges) is stored as a delta against that very parent chunk,
whatever its own frame: weights move least between consecutive checkpoints, so that
delta is the smallest (measured on PPO and AdamW runs: 0.70-0.74 of the raw bytes,
against 0.80-0.82 for a delta against a keyframe a dozen checkpoints old). The chain
below a chunk, its *lineage* (its base, that base's base, ... down to a full frame), is
bounded by ``CodecOptions.max_chain``, so a load decodes at most ``max_chain + 1``
frames per chunk: a chunk whose parent chunk already sits at the bound starts a new
chain as a delta against that chain's root, the full frame at its bottom (a delta
against an older checkpoint, yet still smaller than a full frame while weights drift
slowly), unless it saves under 10% against a full frame. A chunk stored whole roots the
chains after it. The manifest records every chunk's lineage, so garbage collection keeps
a chain whole from Parquet alone.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from castore.blobstore.digest import Digest
from castore.codec.frame import encode_frame_parts
from castore.errors import IntegrityError
from castore.snapshot.fetch import MAX_DECODE_DEPTH, fetch_into, frame_base

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from castore._config import CodecOptions
    from castore.blobstore.store import BlobStore
    from castore.codec.frame import Buffer
    from castore.manifest.records import CheckpointRecord
    from castore.snapshot.chunking import PlannedChunk
    from castore.snapshot.tensors import PlannedEntry

__all__ = [
    "FULL_FRAME_CHECK",
    "BaseCache",
    "DeltaBase",
    "Lineage",
    "Position",
    "chunk_position",
    "delta_base",
    "parent_positions",
    "stored_lineage",
    "write_blob",
]

# A delta larger than this fraction of the raw chunk is compared with a full frame.
FULL_FRAME_CHECK = 0.8
# A new chain's first delta, against the old chain's root, is compared with a full frame
# from this fraction on, and kept only if it saves this much against it: a full frame
# becomes a fresh root, so the chains after it start from recent weights, not old ones.
_REROOT_CHECK = 0.6
_REROOT_GAIN = 0.9

Position = tuple[tuple[object, ...], ...]
# A frame's delta bases, nearest first, ending at a full frame; () for a full frame.
Lineage = tuple[str, ...]


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


def parent_positions(parent: CheckpointRecord) -> dict[Position, tuple[str, Lineage]]:
    """The parent's chunks by position, as (digest, lineage): the delta candidates.

    A chunk that is one piece of one tensor is its own position. The pieces of a pack
    are gathered by digest and ordered by their offset in the blob, as the chunk plan
    orders them (large tensors' chunks may sit between a pack's pieces in the manifest).
    """
    positions: dict[Position, tuple[str, Lineage]] = {}
    packs: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    pack_lineages: dict[str, Lineage] = {}
    for ref in parent.tensors:
        start = 0
        for chunk in ref.chunks:
            piece = (ref.name, ref.dtype, ref.shape, start, chunk.length, chunk.offset)
            if chunk.offset == 0 and chunk.length == chunk.blob_length:
                positions[(piece,)] = (chunk.digest, chunk.lineage)
            else:
                packs[chunk.digest].append(piece)
                pack_lineages[chunk.digest] = chunk.lineage
            start += chunk.length
    for digest, pieces in packs.items():
        position = tuple(sorted(pieces, key=lambda piece: piece[5]))  # type: ignore[arg-type, return-value]
        positions[position] = (digest, pack_lineages[digest])
    return positions


class DeltaBase(NamedTuple):
    """The frame a chunk is a delta against, its lineage, and whether that frame is the
    root of a chain that reached its bound (the new chain's first delta)."""

    digest: str
    lineage: Lineage
    reroot: bool = False


def delta_base(
    position: Position, parent: dict[Position, tuple[str, Lineage]], options: CodecOptions
) -> DeltaBase | None:
    """The frame a chunk at ``position`` is a delta against: the parent checkpoint's chunk
    there, or, when that chunk's chain is ``options.max_chain`` long already, the full
    frame at the chain's root. None: no such chunk, or deltas off."""
    found = parent.get(position)
    if found is None or not options.delta or options.codec == "raw":
        return None
    digest, lineage = found
    if len(lineage) < options.max_chain:
        return DeltaBase(digest, lineage)
    return DeltaBase(lineage[-1], (), reroot=True)


class BaseCache:
    """Decoded bytes of the chunks one save wrote (or reused from the cache before it),
    by digest, up to a byte budget: the next save's delta bases, without reading their
    chains back from the store and decoding them level by level.

    The bytes are copies taken when the chunk was written, from the very memory it was
    hashed from, so they are what the digest names. Thread-safe: encoders add from
    worker threads.
    """

    def __init__(self, budget: int, previous: Mapping[str, np.ndarray]) -> None:
        self._budget = budget
        self._previous = previous
        self._kept: dict[str, np.ndarray] = {}
        self._used = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> np.ndarray | None:
        """The previous save's bytes of ``digest``, if it kept them."""
        return self._previous.get(digest)

    def keep(self, digest: str, data: memoryview | bytes | np.ndarray) -> None:
        """Keep a copy of ``data`` for the next save, if the budget allows."""
        size = memoryview(data).nbytes
        with self._lock:
            if digest in self._kept or self._used + size > self._budget:
                return
            self._used += size
        copy = np.array(np.frombuffer(data, dtype=np.uint8))
        with self._lock:
            self._kept[digest] = copy

    def carry(self, digests: Iterable[str]) -> None:
        """Keep the previous save's bytes of ``digests`` (chunks this save reused)."""
        for digest in digests:
            found = self._previous.get(digest)
            if found is not None:
                with self._lock:
                    if digest not in self._kept and self._used + found.nbytes <= self._budget:
                        self._kept[digest] = found
                        self._used += found.nbytes

    def kept(self) -> dict[str, np.ndarray]:
        with self._lock:
            return dict(self._kept)


def write_blob(
    blobs: BlobStore,
    digest: Digest,
    chunk: PlannedChunk,
    data: memoryview | bytes,
    base: DeltaBase | None,
    options: CodecOptions,
    cache: BaseCache | None = None,
) -> tuple[int, Lineage]:
    """Encode and put one blob (a delta against ``base`` where that pays); return its
    frame size and lineage. ``cache`` supplies base bytes the previous save kept."""
    parts: list[Buffer] | None = None
    lineage: Lineage = ()
    if base is not None:
        base_digest, base_lineage, reroot = base
        base_bytes = cache.get(base_digest) if cache is not None else None
        if base_bytes is None:
            base_bytes = np.empty(chunk.length, dtype=np.uint8)
            fetch_into(blobs, Digest(base_digest), base_bytes)
        parts = encode_frame_parts(
            data,
            element_size=chunk.element_size,
            base=base_bytes,
            base_digest=base_digest,
            options=options,
        )
        lineage = (base_digest, *base_lineage)
        check, gain = (_REROOT_CHECK, _REROOT_GAIN) if reroot else (FULL_FRAME_CHECK, 1.0)
        if _size(parts) > chunk.length * check:
            full = encode_frame_parts(data, element_size=chunk.element_size, options=options)
            if _size(parts) >= gain * _size(full):
                parts, lineage = full, ()
    if parts is None:
        parts = encode_frame_parts(data, element_size=chunk.element_size, options=options)
    blobs.put(digest, parts)
    return _size(parts), lineage


def stored_lineage(blobs: BlobStore, digest: Digest) -> Lineage:
    """The lineage of a frame already in the store, from the headers down its chain (one
    ranged read per frame).

    Raises:
        IntegrityError: the chain is longer than any castore writes, or loops.
    """
    lineage: list[str] = []
    base = frame_base(blobs, digest)
    while base is not None:
        lineage.append(base)
        if len(lineage) > MAX_DECODE_DEPTH:
            raise IntegrityError(
                f"delta chain of blob {digest[:12]}… is longer than {MAX_DECODE_DEPTH} frames",
                digest=digest,
            )
        base = frame_base(blobs, base)
    return tuple(lineage)


def _size(parts: Sequence[Buffer]) -> int:
    return sum(memoryview(part).nbytes for part in parts)
