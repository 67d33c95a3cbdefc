"""mmap loads: a checkpoint's tensors laid out in one local file, returned as mappings of it.

Layout: the data entries (tensors and shared storages) in manifest order, each at an
offset aligned to 64 bytes (any element type's alignment, and a cache line), nothing
else in the file. The file is named by a digest of that layout and of the chunks that
fill it, under ``<cache dir>/mmap/``, so loading the same tensors again, from any run or
store, maps the file already there.

Building: blobs are decoded on threads into a per-load scratch buffer (a raw frame on
local disk is read into it straight from the page cache, see ``fetch``), hashed there
while it is in the CPU's caches, and written at their offsets with ``pwrite`` into
``<name>.tmp-<random>``, which is renamed to ``<name>.bin`` only once every blob has been
written and verified; a crashed or failed load leaves at worst a temporary file, never
reused and removed a day later. Decoding (or reading a raw payload) into a shared
writable mapping of the file instead costs a page fault per page written and was slower
on the reference VM, as was ``copy_file_range`` from the blob files (ext4 copies through
the page cache, and the bytes must be read anyway to be hashed); and a full disk would
kill the process with SIGBUS where ``pwrite`` raises. The space is reserved first
(``posix_fallocate`` where there is one), so a full disk fails the load before anything
is fetched. Memory stays a few blobs per worker, whatever the checkpoint's size.

Mapping: ``torch.UntypedStorage.from_file(path, shared=False)`` opens the file read-only
and maps it ``MAP_PRIVATE``: pages load on first touch and can be evicted again, and a
write to a returned tensor copies that page privately, never reaching the file (the file
is also made read-only). Each data entry gets its own slice of that storage, as
``torch.load(mmap=True)`` does, so a re-save sees separate tensors, while views of one
shared storage still share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from castore.codec.hashing import hash_bytes
from castore.errors import IntegrityError
from castore.snapshot.dtypes import dtype_of, element_size
from castore.snapshot.fetch import fetch_jobs, plan_jobs
from castore.snapshot.mmap_check import check_file, mark_verified, marker, verified_this_boot

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from castore._config import TransferOptions
    from castore.blobstore.store import BlobStore
    from castore.snapshot.refs import TensorRef

__all__ = ["ALIGNMENT", "MmapCache", "MmapLayout", "load_mapped", "plan_layout"]

ALIGNMENT = 64
_LAYOUT_VERSION = "castore-mmap-1"
_STALE_TMP_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class MmapCache:
    """Where mapped files live, and the total size beyond which the least recently used
    ones are removed."""

    directory: str
    max_bytes: int


@dataclass(frozen=True, slots=True)
class MmapLayout:
    offsets: dict[str, int]
    size: int
    name: str


def plan_layout(refs: Sequence[TensorRef]) -> MmapLayout:
    """Offsets of the data entries of ``refs`` and the file name their content gets."""
    offsets: dict[str, int] = {}
    described = []
    position = 0
    for ref in refs:
        if not ref.has_data:
            continue
        position = -(-position // ALIGNMENT) * ALIGNMENT
        offsets[ref.name] = position
        chunks = [[c.digest, c.offset, c.length] for c in ref.chunks]
        described.append([position, ref.dtype, list(ref.shape), chunks])
        position += ref.numel * element_size(ref.dtype)
    key = json.dumps([_LAYOUT_VERSION, ALIGNMENT, described], separators=(",", ":"))
    return MmapLayout(offsets, position, hash_bytes(key.encode()))


def load_mapped(
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    *,
    cache: MmapCache,
    transfer: TransferOptions,
    verify: bool = True,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """CPU tensors of the data entries of ``refs``, mapping the layout file (built if needed).

    A file already there is reused if its size is right and, with ``verify``, it was
    written or checked during this boot or its bytes still hash to the digests of the
    blobs they came from (see ``mmap_check``); a file that fails is rebuilt.
    """
    layout = plan_layout(refs)
    data_refs = [ref for ref in refs if ref.has_data]
    if layout.size == 0:
        return {ref.name: torch.empty(ref.shape, dtype=dtype_of(ref.dtype)) for ref in data_refs}
    path = os.path.join(cache.directory, f"{layout.name}.bin")
    if not _reusable(path, layout, blobs, data_refs, transfer, verify):
        _build(path, layout, blobs, data_refs, transfer, verify, on_bytes)
        _evict(cache, keep=path)
    storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=layout.size)
    tensors = {}
    for ref in data_refs:
        start = layout.offsets[ref.name]
        nbytes = ref.numel * element_size(ref.dtype)
        tensor = torch.empty(0, dtype=dtype_of(ref.dtype, tensor=ref.name))
        tensors[ref.name] = tensor.set_(storage[start : start + nbytes], 0, ref.shape)
    return tensors


class _FileDestination:
    """Entry bytes written into the layout file with pwrite."""

    def __init__(self, fd: int, layout: MmapLayout) -> None:
        self.fd = fd
        self.offsets = layout.offsets

    def view(self, entry: str, position: int, length: int) -> np.ndarray | None:
        """Always None: blobs are decoded into scratch memory and written with ``write``."""
        return None

    def write(self, entry: str, position: int, data: np.ndarray) -> None:
        offset, view = self.offsets[entry] + position, memoryview(data)
        while view.nbytes:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written


def _reusable(
    path: str,
    layout: MmapLayout,
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    transfer: TransferOptions,
    verify: bool,
) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size != layout.size:
            return False
        if verify and not verified_this_boot(path):
            check_file(fd, layout.offsets, plan_jobs(refs), blobs, transfer)
            mark_verified(path, True)
    except IntegrityError:
        return False
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.utime(path)
    return True


def _build(
    path: str,
    layout: MmapLayout,
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    transfer: TransferOptions,
    verify: bool,
    on_bytes: Callable[[int], None] | None,
) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, layout.size)
            else:
                os.ftruncate(fd, layout.size)
            destination = _FileDestination(fd, layout)
            fetch_jobs(
                blobs,
                plan_jobs(refs),
                destination,
                transfer=transfer,
                verify=verify,
                on_bytes=on_bytes,
            )
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
        mark_verified(path, False)
        os.replace(tmp, path)
        mark_verified(path, verify)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _evict(cache: MmapCache, *, keep: str) -> None:
    """Remove least recently used files beyond the cap, day-old temporary files, and
    markers of files that are gone.

    A process that still maps a removed file keeps its pages; the name is what goes.
    """
    entries = []
    markers = []
    now = time.time()
    with os.scandir(cache.directory) as found:
        for entry in found:
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                if ".tmp-" in entry.name:
                    if now - stat.st_mtime > _STALE_TMP_S:
                        os.unlink(entry.path)
                elif entry.name.endswith(".ok") and ".bin." in entry.name:
                    markers.append(entry.path)
                elif entry.name.endswith(".bin") and entry.path != keep:
                    entries.append((stat.st_mtime, entry.path, stat.st_size))
    total = sum(size for *_, size in entries) + os.path.getsize(keep)
    for _, path, size in sorted(entries):
        if total <= cache.max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        total -= size
    for path in markers:
        data = path[: path.index(".bin.") + 4]
        if not os.path.exists(data) or marker(data) != path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
