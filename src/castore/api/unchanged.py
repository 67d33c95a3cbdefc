"""Reusing the digests of tensors that have not changed since this process last saved.

In-place operations bump a tensor's version counter, which its views and ``detach()``
share, so a tensor at the same memory with the same version, dtype, shape and strides
as at the previous save holds the same bytes: its chunks are neither read nor hashed
again, which makes saving a mostly frozen model cost what changed. The memo keeps the
previous save's tensors alive, so their memory cannot be reused by a new tensor that
would then look unchanged.

Writes through ``tensor.data`` or a numpy view escape the version counter. Three
sampled windows of every reused chunk are hashed again, which catches writes that touch
the whole tensor (a soft target-network update, ``.data.copy_``) but can miss a partial
one (one embedding row): code that writes weights that way saves with
``reuse_unchanged=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from castore.codec.hashing import hash_bytes
from castore.snapshot.refs import Role
from castore.snapshot.tensors import host_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore.blobstore.digest import Digest
    from castore.snapshot.chunking import PlannedChunk
    from castore.snapshot.tensors import PlannedEntry

__all__ = ["ChunkKey", "SaveMemo", "chunk_key", "remember", "sample_digest"]

_WINDOW_BYTES = 4096

ChunkKey = tuple[tuple[object, ...], ...]


@dataclass(frozen=True, slots=True)
class SaveMemo:
    """What one save hashed: chunk key -> (digest, sample digest), and the tensors read."""

    epoch: int
    digests: dict[ChunkKey, tuple[Digest, str]]
    tensors: list[torch.Tensor] = field(repr=False)


def chunk_key(chunk: PlannedChunk, entries: Sequence[PlannedEntry]) -> ChunkKey | None:
    """Identity of a chunk's source memory and version, or None if it cannot be trusted."""
    key = []
    for piece in chunk.pieces:
        entry = entries[piece.entry]
        tensor = entry.source
        if entry.role != Role.TENSOR or tensor is None or not tensor.is_contiguous():
            return None
        key.append(
            (
                entry.name,
                str(tensor.device),
                tensor.data_ptr(),
                tensor._version,
                tensor.dtype,
                tuple(tensor.shape),
                piece.start,
                piece.length,
                piece.offset,
            )
        )
    return tuple(key)


def sample_digest(
    chunk: PlannedChunk,
    entries: Sequence[PlannedEntry],
    views: dict[int, memoryview] | None = None,
) -> str:
    """Hash of a few windows (start, middle, end) of each piece, read from any device.
    ``views`` caches CPU entries' bytes across the chunks of one save (a 1 GiB tensor has
    256 chunks; viewing it once per chunk was a third of an unchanged re-save)."""
    windows: list[bytes | memoryview] = []
    views = {} if views is None else views
    for piece in chunk.pieces:
        source = entries[piece.entry].source
        assert source is not None
        if source.device.type == "cpu":
            if piece.entry not in views:
                views[piece.entry] = host_bytes(source)
            flat: memoryview | torch.Tensor = views[piece.entry]
        else:
            flat = source.detach().reshape(-1).view(torch.uint8)
        starts = sorted(
            {
                0,
                max(0, piece.length // 2 - _WINDOW_BYTES // 2),
                max(0, piece.length - _WINDOW_BYTES),
            }
        )
        for start in starts:
            begin = piece.start + start
            window = flat[begin : begin + min(_WINDOW_BYTES, piece.length - start)]
            windows.append(window if isinstance(window, memoryview) else window.cpu().numpy().data)
    return hash_bytes(b"".join(windows))


def remember(
    epoch: int,
    chunks: Sequence[PlannedChunk],
    entries: Sequence[PlannedEntry],
    keys: Sequence[ChunkKey | None],
    digests: Sequence[Digest],
    samples: dict[int, str],
) -> SaveMemo:
    """The memo of a finished save; ``samples`` holds the sample digests already taken."""
    remembered: dict[ChunkKey, tuple[Digest, str]] = {}
    views: dict[int, memoryview] = {}
    for index, (chunk, key, digest) in enumerate(zip(chunks, keys, digests, strict=True)):
        if key is not None:
            sample = samples.get(index) or sample_digest(chunk, entries, views)
            remembered[key] = (digest, sample)
    tensors = [e.source for e in entries if e.source is not None and e.role == Role.TENSOR]
    return SaveMemo(epoch, remembered, tensors)
