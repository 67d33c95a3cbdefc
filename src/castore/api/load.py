"""load_checkpoint: read part -> fetch blobs concurrently -> decode and verify -> rebuild.

Each blob is fetched once even when a pack serves many tensors; its decoded bytes are
copied straight into the preallocated tensors, and its digest is verified before any of
it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from castore._concurrency import bounded_map
from castore.api.progress import progress_bar
from castore.blobstore.digest import Digest
from castore.codec.frame import decode_frame_into
from castore.errors import CastoreError, IntegrityError
from castore.snapshot.rebuild import allocate, assemble, byte_view, check_refs
from castore.snapshot.refs import Role
from castore.snapshot.tree import unflatten_tree

if TYPE_CHECKING:
    from castore._config import TransferOptions
    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord

__all__ = ["MapLocation", "load_checkpoint"]

MapLocation = str | torch.device | None


@dataclass(slots=True)
class _BlobJob:
    digest: str
    blob_length: int
    targets: list[tuple[str, int, int, int]] = field(default_factory=list)


def load_checkpoint(
    blobs: BlobStore,
    record: CheckpointRecord,
    *,
    transfer: TransferOptions,
    map_location: MapLocation = None,
    progress: bool | None = None,
) -> Any:
    """Rebuild the saved tree; tensors land on ``map_location`` (CPU by default)."""
    refs = record.tensors
    check_refs(refs)
    data = allocate(refs)
    destinations = {name: byte_view(tensor) for name, tensor in data.items()}

    jobs: dict[str, _BlobJob] = {}
    for ref in refs:
        position = 0
        for chunk in ref.chunks:
            job = jobs.setdefault(chunk.digest, _BlobJob(chunk.digest, chunk.blob_length))
            job.targets.append((ref.name, position, chunk.offset, chunk.length))
            position += chunk.length

    def fetch(job: _BlobJob) -> None:
        (name, position, offset, length), *others = job.targets
        whole = not others and offset == 0 and length == job.blob_length
        out = (
            destinations[name][position : position + length]
            if whole
            else np.empty(job.blob_length, dtype=np.uint8)
        )
        try:
            _fetch_into(blobs, Digest(job.digest), out)
        except CastoreError as exc:
            exc.tensor = exc.tensor or name
            raise
        if not whole:
            for name, position, offset, length in job.targets:
                destinations[name][position : position + length] = out[offset : offset + length]

    total = sum(job.blob_length for job in jobs.values())
    try:
        with progress_bar(total, "loading", progress) as bar:
            bounded_map(
                fetch,
                list(jobs.values()),
                size_of=lambda job: job.blob_length,
                workers=transfer.workers,
                max_in_flight_bytes=transfer.max_in_flight_bytes,
                on_result=lambda job, _: bar.update(job.blob_length),
            )
    except CastoreError as exc:
        exc.run, exc.epoch = record.run, record.epoch
        raise

    device = torch.device(map_location) if map_location is not None else None
    tensors = assemble(refs, data, device)
    leaves = [tensors[ref.name] for ref in refs if ref.role != Role.STORAGE]
    return unflatten_tree(record.skeleton, leaves)


def _fetch_into(
    blobs: BlobStore, digest: Digest, out: np.ndarray, *, from_store: bool = False
) -> None:
    """Fetch one blob, decode it into ``out`` and verify it there; a delta frame's base is
    fetched the same way.

    A frame that fails verification is fetched once more from the store when the first
    copy came from the local cache (then discarded): the store's copy decides.
    """

    def base_bytes(base: str) -> np.ndarray:
        decoded = np.empty(out.size, dtype=np.uint8)
        _fetch_into(blobs, Digest(base), decoded)
        return decoded

    try:
        decode_frame_into(blobs.get(digest), out, digest=digest, get_base=base_bytes)
    except IntegrityError:
        if from_store or not blobs.discard_cached(digest):
            raise
        _fetch_into(blobs, digest, out, from_store=True)
