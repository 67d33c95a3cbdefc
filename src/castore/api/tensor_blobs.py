"""Planned entries -> blobs: chunk plan, unchanged chunks, hash, dedup, encode and put.

``plan_store`` does everything that reads the entries (the chunk plan, the chunks
unchanged since the previous save, the memo's sampled windows, the bytes still to hash,
copied for a save that finishes in the background); ``store_planned`` does the rest.
``store_tensors`` runs both, for ``castore.dcp`` (where each rank stores its own items
and the coordinator commits) and, through ``api.save``, for ``run.save``. Hashing and
encoding run on threads (BLAKE3 and zstd release the GIL) with a bound on bytes in
flight. Only digests neither in the parent checkpoint nor already in the store are
encoded and uploaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore._concurrency import bounded_map
from castore.api.deltas import (
    BaseCache,
    Lineage,
    chunk_position,
    delta_base,
    parent_positions,
    stored_lineage,
    write_blob,
)
from castore.api.progress import progress_bar
from castore.api.unchanged import (
    EntryState,
    Layout,
    SaveMemo,
    Windows,
    entry_layout,
    entry_states,
    read_windows,
    remember,
    reuse_digests,
)
from castore.codec.hashing import hash_bytes
from castore.snapshot.chunking import PlannedChunk, chunk_data, plan_chunks
from castore.snapshot.host_copy import frozen_bytes
from castore.snapshot.refs import ChunkRef, TensorRef
from castore.snapshot.tensors import PlannedEntry, host_bytes

if TYPE_CHECKING:
    from castore._config import ChunkingOptions, CodecOptions, TransferOptions
    from castore.blobstore.digest import Digest
    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord

__all__ = [
    "SaveOptions",
    "StorePlan",
    "StoredTensors",
    "plan_store",
    "store_planned",
    "store_tensors",
]


@dataclass(frozen=True, slots=True)
class SaveOptions:
    chunking: ChunkingOptions
    codec: CodecOptions
    transfer: TransferOptions
    progress: bool | None = None
    reuse_unchanged: bool = True


@dataclass(frozen=True, slots=True)
class StoredTensors:
    """Where each entry's bytes now live, and what storing them wrote.

    ``written`` maps every blob this call wrote to its (decoded, frame) sizes in bytes;
    ``n_blobs`` counts the distinct blobs the entries use, written or found.
    """

    refs: tuple[TensorRef, ...]
    logical_bytes: int
    written: dict[Digest, tuple[int, int]]
    n_blobs: int
    memo: SaveMemo

    @property
    def new_bytes(self) -> int:
        return sum(decoded for decoded, _ in self.written.values())

    @property
    def stored_bytes(self) -> int:
        return sum(frame for _, frame in self.written.values())


def store_tensors(
    blobs: BlobStore,
    entries: list[PlannedEntry],
    *,
    epoch: int,
    parent: CheckpointRecord | None,
    options: SaveOptions,
    memo: SaveMemo | None = None,
) -> StoredTensors:
    """Put the blobs ``entries`` need that the store lacks; return one ref per entry.

    A chunk at the same position (entry name, dtype, shape, range) as in ``parent`` is
    stored as a delta against it. ``memo`` is what this process's previous save
    remembered (see ``unchanged``); it is used only when that save is the parent.
    """
    plan = plan_store(entries, parent=parent, options=options, memo=memo)
    return store_planned(blobs, plan, epoch=epoch, parent=parent, options=options)


@dataclass(frozen=True, slots=True)
class StorePlan:
    """What ``plan_store`` decided: the chunk plan, the digests reused from the memo
    (``found``), the bytes of every entry a chunk still to hash reads (``data``), and the
    memo's windows, read from the entries as they were."""

    entries: list[PlannedEntry]
    layout: Layout
    states: tuple[EntryState, ...]
    same: SaveMemo | None
    usable: SaveMemo | None
    chunks: tuple[PlannedChunk, ...]
    found: dict[int, Digest]
    data: list[memoryview | None]
    windows: Windows


def plan_store(
    entries: list[PlannedEntry],
    *,
    parent: CheckpointRecord | None,
    options: SaveOptions,
    memo: SaveMemo | None = None,
    copy: bool = False,
) -> StorePlan:
    """Plan the chunks of ``entries`` and find those unchanged since ``memo``; everything
    that reads the entries happens here. ``copy``: the bytes of entries with chunks left
    to hash are copied to host memory (``snapshot.host_copy``), and entries whose chunks
    are all unchanged are not copied at all, so a mostly frozen model costs a copy of
    what changed."""
    layout = entry_layout(entries)
    states = entry_states(entries) if options.reuse_unchanged else (None,) * len(entries)
    usable = (
        memo if memo is not None and parent is not None and memo.epoch == parent.epoch else None
    )
    if usable is not None and usable.chunking == options.chunking and usable.layout == layout:
        same = usable
        chunks = same.chunks
    else:
        same = None
        chunks = plan_chunks(
            [e.nbytes for e in entries],
            [e.element_size for e in entries],
            options.chunking,
            names=[e.name for e in entries],
        ).chunks
    found = reuse_digests(chunks, entries, layout, states, usable, same_plan=same is not None)
    reused_all = same is not None and all(i in found for i in same.samples.chunks)
    needed = {piece.entry for i, c in enumerate(chunks) if i not in found for piece in c.pieces}
    read = frozen_bytes if copy else host_bytes
    data = [
        read(e.source) if i in needed and e.source is not None else None
        for i, e in enumerate(entries)
    ]
    windows = read_windows(chunks, entries, states, previous=same, reused_all=reused_all)
    return StorePlan(entries, layout, states, same, usable, chunks, found, data, windows)


def store_planned(
    blobs: BlobStore,
    plan: StorePlan,
    *,
    epoch: int,
    parent: CheckpointRecord | None,
    options: SaveOptions,
) -> StoredTensors:
    """Hash, dedup and store what ``plan`` left to do; return one ref per entry."""
    entries, chunks, found, data = plan.entries, plan.chunks, dict(plan.found), plan.data
    same, usable = plan.same, plan.usable
    to_hash = [i for i in range(len(chunks)) if i not in found]
    transfer = options.transfer
    if to_hash:
        with progress_bar(
            sum(chunks[i].length for i in to_hash), "hashing", options.progress
        ) as bar:
            hashed: list[Digest] = bounded_map(
                lambda i: hash_bytes(chunk_data(chunks[i], data)),
                to_hash,
                size_of=lambda i: chunks[i].length,
                workers=transfer.workers,
                max_in_flight_bytes=transfer.max_in_flight_bytes,
                on_result=lambda i, _: bar.update(chunks[i].length),
            )
        found.update(zip(to_hash, hashed, strict=True))
    digests = tuple(found[i] for i in range(len(chunks)))

    first_chunk: dict[Digest, PlannedChunk] = {}
    for chunk, digest in zip(chunks, digests, strict=True):
        first_chunk.setdefault(digest, chunk)
    lineages = _parent_lineages(parent)
    unknown = [d for d in first_chunk if d not in lineages]
    present = blobs.has_many(unknown) if unknown else set()
    missing = sorted(set(unknown) - present)
    if present:  # blobs other checkpoints wrote: their chains come from frame headers
        elsewhere = sorted(present)
        chains = bounded_map(
            lambda d: stored_lineage(blobs, d),
            elsewhere,
            size_of=lambda _: 0,
            workers=transfer.workers,
            max_in_flight_bytes=1,
        )
        lineages.update(zip(elsewhere, chains, strict=True))
    # Bases for the next save: only once a run is under way (a first save may be the last).
    keep = parent is not None and options.codec.delta and options.codec.codec != "raw"
    cache = BaseCache(
        options.codec.base_cache_bytes if keep else 0, usable.bases if usable is not None else {}
    )
    frame_sizes: list[int] = []
    if missing:
        positions = parent_positions(parent) if parent is not None else {}

        def encode_and_put(digest: Digest) -> int:
            chunk = first_chunk[digest]
            raw = chunk_data(chunk, data)
            base = delta_base(chunk_position(chunk, entries), positions, options.codec)
            size, lineages[digest] = write_blob(
                blobs, digest, chunk, raw, base, options.codec, cache
            )
            cache.keep(digest, raw)
            return size

        new_bytes = sum(first_chunk[d].length for d in missing)
        with progress_bar(new_bytes, "writing", options.progress) as bar:
            frame_sizes = bounded_map(
                encode_and_put,
                missing,
                size_of=lambda d: first_chunk[d].length,
                workers=transfer.workers,
                max_in_flight_bytes=transfer.max_in_flight_bytes,
                on_result=lambda d, _: bar.update(first_chunk[d].length),
            )
    if (
        same is not None
        and parent is not None
        and parent.tensors is same.refs
        and digests == same.digests
    ):
        # The parent is the save the memo remembers and committed these very refs: the
        # same entries, chunks and digests, each digest's lineage taken from the parent.
        refs = same.refs
    else:
        refs = _tensor_refs(entries, chunks, digests, lineages)
    cache.carry(set(first_chunk).difference(missing))
    return StoredTensors(
        refs=refs,
        logical_bytes=sum(chunk.length for chunk in chunks),
        written={
            d: (first_chunk[d].length, size) for d, size in zip(missing, frame_sizes, strict=True)
        },
        n_blobs=len(first_chunk),
        memo=dataclasses.replace(
            remember(
                epoch,
                options.chunking,
                chunks,
                entries,
                plan.layout,
                plan.states,
                digests,
                refs,
                plan.windows,
            ),
            bases=cache.kept(),
        ),
    )


def _parent_lineages(parent: CheckpointRecord | None) -> dict[str, Lineage]:
    """Every blob the parent references, its chains' bases included, with its lineage:
    all known present."""
    lineages: dict[str, Lineage] = {}
    if parent is not None:
        for ref in parent.tensors:
            for chunk in ref.chunks:
                chain = (chunk.digest, *chunk.lineage)
                for depth, digest in enumerate(chain):
                    lineages.setdefault(digest, chain[depth + 1 :])
    return lineages


def _tensor_refs(
    entries: list[PlannedEntry],
    chunks: tuple[PlannedChunk, ...],
    digests: tuple[Digest, ...],
    lineages: dict[str, Lineage],
) -> tuple[TensorRef, ...]:
    pieces: list[list[tuple[int, ChunkRef]]] = [[] for _ in entries]
    for chunk, digest in zip(chunks, digests, strict=True):
        lineage = lineages[digest]
        base, ancestors = (lineage[0], lineage[1:]) if lineage else (None, ())
        for piece in chunk.pieces:
            ref = ChunkRef(digest, piece.offset, piece.length, chunk.length, base, ancestors)
            pieces[piece.entry].append((piece.start, ref))
    return tuple(
        TensorRef(
            name=entry.name,
            role=entry.role,
            dtype=entry.dtype,
            shape=entry.shape,
            chunks=tuple(ref for _, ref in sorted(pieces[i], key=lambda p: p[0])),
            base=entry.base,
            storage_offset=entry.storage_offset,
            stride=entry.stride,
            device=entry.device,
        )
        for i, entry in enumerate(entries)
    )
