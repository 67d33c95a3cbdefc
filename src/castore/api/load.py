"""load_checkpoint: read part -> select -> fetch blobs concurrently -> decode and verify -> rebuild.

Each blob is fetched once even when a pack serves many tensors, and decoded straight into
the memory its bytes belong in: fresh CPU tensors, pinned host buffers that are copied to
a GPU as each tensor completes, or the local file an mmap load maps (``snapshot.mmap_file``).
A partial load (``keys``) fetches only the blobs of the tensors it selects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from castore._config import CacheOptions, default_cache_dir
from castore.api.progress import progress_bar
from castore.blobstore.store import CachedBlobStore
from castore.errors import CastoreError, InvalidCheckpointError
from castore.snapshot.dtypes import dtype_of
from castore.snapshot.fetch import MemoryDestination, fetch_jobs, plan_jobs
from castore.snapshot.mmap_file import MmapCache, load_mapped
from castore.snapshot.rebuild import allocate, assemble, byte_view, check_refs
from castore.snapshot.select import needed_refs, select, visible_names
from castore.snapshot.tree import refuse_pickles, unflatten_tree

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from castore._config import TransferOptions
    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord
    from castore.snapshot.refs import TensorRef

__all__ = ["Keys", "MapLocation", "load_checkpoint", "load_tensors", "mmap_cache_for"]

MapLocation = str | torch.device | None
Keys = str | Sequence[str] | None


def mmap_cache_for(blobs: BlobStore) -> MmapCache:
    """``mmap/`` beside the blob cache when there is one, else in the default cache dir."""
    if isinstance(blobs, CachedBlobStore):
        directory, max_bytes = blobs.cache.directory, blobs.cache.max_bytes
    else:
        directory, max_bytes = default_cache_dir(), CacheOptions().max_bytes
    return MmapCache(os.path.join(directory, "mmap"), max_bytes)


def load_checkpoint(
    blobs: BlobStore,
    record: CheckpointRecord,
    *,
    transfer: TransferOptions,
    map_location: MapLocation = None,
    progress: bool | None = None,
    keys: Keys = None,
    mmap: bool = False,
    verify: bool = True,
    trust: bool = False,
) -> Any:
    """Rebuild the saved tree, or the sub-tree ``keys`` selects (see ``snapshot.select``).

    Tensors land on ``map_location`` (CPU by default); ``mmap`` returns CPU tensors that
    map a local file (copied to ``map_location`` if that is another device). A pickled
    object is unpickled only with ``trust``, and refused before anything is fetched.
    """
    check_refs(record.tensors)
    if keys is None:
        if not trust:
            refuse_pickles(record.skeleton)
        refs: Sequence[TensorRef] = record.tensors
        skeleton = record.skeleton
        names = visible_names(refs)
    else:
        if not isinstance(keys, str | Sequence) or not all(isinstance(k, str) for k in keys):
            raise InvalidCheckpointError(
                f"keys must be a glob pattern or a list of them, got {keys!r:.80}"
            )
        patterns = [keys] if isinstance(keys, str) else list(keys)
        if not patterns:
            raise InvalidCheckpointError("keys is empty; pass keys=None to load everything")
        selection = select(record.skeleton, record.tensors, patterns)
        refs, skeleton, names = selection.refs, selection.skeleton, list(selection.names)
    tensors = _load_refs(
        blobs, record, refs, transfer, map_location, progress=progress, mmap=mmap, verify=verify
    )
    return unflatten_tree(skeleton, [tensors[name] for name in names], trust=trust)


def load_tensors(
    blobs: BlobStore,
    record: CheckpointRecord,
    names: Iterable[str],
    *,
    transfer: TransferOptions,
    verify: bool = True,
) -> dict[str, torch.Tensor]:
    """The named tensors (exact entry names), on the CPU, fetching only their blobs.

    Raises:
        UnknownKeyError: a name that is not a tensor of the checkpoint (also a KeyError).
    """
    check_refs(record.tensors)
    refs = needed_refs(record.tensors, names)
    return _load_refs(
        blobs, record, refs, transfer, None, progress=False, mmap=False, verify=verify
    )


def _load_refs(
    blobs: BlobStore,
    record: CheckpointRecord,
    refs: Sequence[TensorRef],
    transfer: TransferOptions,
    map_location: MapLocation,
    *,
    progress: bool | None,
    mmap: bool,
    verify: bool,
) -> dict[str, torch.Tensor]:
    """Every tensor of ``refs`` by name, ties rebuilt, on ``map_location``."""
    if map_location is not None and not isinstance(map_location, str | torch.device):
        raise InvalidCheckpointError(
            f"map_location must be a device name or torch.device, got {map_location!r}"
        )
    device = torch.device(map_location) if map_location is not None else None
    total = sum(chunk.length for ref in refs for chunk in ref.chunks)
    try:
        with progress_bar(total, "loading", progress) as bar:
            if mmap:
                data = load_mapped(
                    blobs,
                    refs,
                    cache=mmap_cache_for(blobs),
                    transfer=transfer,
                    verify=verify,
                    on_bytes=bar.update,
                )
            elif device is not None and device.type == "cuda":
                data = _load_to_cuda(blobs, refs, device, transfer, verify, bar.update)
            else:
                data = allocate(refs)
                destination = MemoryDestination({n: byte_view(t) for n, t in data.items()})
                fetch_jobs(
                    blobs,
                    plan_jobs(refs),
                    destination,
                    transfer=transfer,
                    verify=verify,
                    on_bytes=bar.update,
                )
    except CastoreError as exc:
        exc.run, exc.epoch = record.run, record.epoch
        raise
    return assemble(refs, data, device)


def _load_to_cuda(
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    device: torch.device,
    transfer: TransferOptions,
    verify: bool,
    on_bytes: Callable[[int], None],
) -> dict[str, torch.Tensor]:
    """Decode into pinned host tensors and copy each to ``device`` asynchronously as soon
    as all its blobs are in, so transfers overlap decoding; synchronize before returning."""
    host: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for ref in refs:
        if ref.has_data:
            dtype = dtype_of(ref.dtype, tensor=ref.name)
            host[ref.name] = torch.empty(ref.shape, dtype=dtype, pin_memory=True)
            out[ref.name] = torch.empty(ref.shape, dtype=dtype, device=device)

    def copy(name: str) -> None:
        out[name].copy_(host[name], non_blocking=True)

    destination = MemoryDestination({n: byte_view(t) for n, t in host.items()})
    fetch_jobs(
        blobs,
        plan_jobs(refs),
        destination,
        transfer=transfer,
        verify=verify,
        on_bytes=on_bytes,
        on_entry=copy,
    )
    torch.cuda.current_stream(device).synchronize()
    return out
