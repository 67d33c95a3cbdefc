"""Fetching blobs for a load: each blob once, decoded where its bytes go, on threads.

A blob that is exactly one entry's range (every chunk of a large tensor) is decoded
straight into its destination when the destination is memory; a pack, a partial range,
or a file destination goes through a per-load scratch buffer. A load opens each blob
with ``BlobStore.reader``, so a raw frame on local disk is read from the page cache
into that memory with one copy (``codec.frame.decode_blob_into``). Digests are verified
where the bytes are decoded, before any of them is used; a local blob file hashed once
since the machine booted, and unchanged since, is trusted (``blobstore.verified``).
"""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from castore._concurrency import bounded_map
from castore.blobstore.digest import Digest
from castore.codec.frame import decode_blob_into, decode_frame_into
from castore.codec.header import MAX_HEADER_BYTES, unpack_header
from castore.errors import CastoreError, IntegrityError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from castore._config import TransferOptions
    from castore.blobstore.decoded import DecodedBlobs
    from castore.blobstore.store import BlobStore
    from castore.snapshot.refs import TensorRef

__all__ = [
    "MAX_DECODE_DEPTH",
    "BlobJob",
    "Destination",
    "MemoryDestination",
    "Piece",
    "ScratchPool",
    "fetch_into",
    "fetch_jobs",
    "frame_base",
    "plan_jobs",
]

# Delta frames a decode follows below one blob before it calls the chain forged: castore
# writes at most ``CodecOptions.max_chain`` (a few), and a loop of bases never ends.
MAX_DECODE_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Piece:
    """``length`` bytes at ``offset`` in the decoded blob go to ``position`` in ``entry``."""

    entry: str
    position: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class BlobJob:
    digest: Digest
    blob_length: int
    pieces: tuple[Piece, ...]

    @property
    def whole(self) -> bool:
        """True when the blob is one piece of one entry, nothing more."""
        return len(self.pieces) == 1 and self.pieces[0].length == self.blob_length


def plan_jobs(refs: Sequence[TensorRef]) -> list[BlobJob]:
    """One job per distinct blob the data entries of ``refs`` reference, in first-use order."""
    pieces: dict[str, list[Piece]] = {}
    lengths: dict[str, int] = {}
    for ref in refs:
        position = 0
        for chunk in ref.chunks:
            pieces.setdefault(chunk.digest, []).append(
                Piece(ref.name, position, chunk.offset, chunk.length)
            )
            lengths[chunk.digest] = chunk.blob_length
            position += chunk.length
    return [BlobJob(Digest(d), lengths[d], tuple(p)) for d, p in pieces.items()]


class Destination(Protocol):
    """Where decoded entry bytes go: memory to decode into, or a writer of copies."""

    def view(self, entry: str, position: int, length: int) -> np.ndarray | None:
        """Writable uint8 memory for these bytes of ``entry``, or None to use ``write``."""

    def write(self, entry: str, position: int, data: np.ndarray) -> None:
        """Store ``data`` as the bytes of ``entry`` from ``position`` on."""


class MemoryDestination:
    """Entries' bytes in memory: flat uint8 views of preallocated tensors, say."""

    def __init__(self, buffers: Mapping[str, np.ndarray]) -> None:
        self.buffers = buffers

    def view(self, entry: str, position: int, length: int) -> np.ndarray:
        return self.buffers[entry][position : position + length]

    def write(self, entry: str, position: int, data: np.ndarray) -> None:
        self.buffers[entry][position : position + data.size] = data


class ScratchPool:
    """Decode buffers reused across the blobs of one load: as many as run at once."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    @contextmanager
    def take(self, size: int) -> Iterator[np.ndarray]:
        with self._lock:
            buffer = self._free.pop() if self._free else np.empty(0, dtype=np.uint8)
        if buffer.size < size:
            buffer = np.empty(size, dtype=np.uint8)
        try:
            yield buffer[:size]
        finally:
            with self._lock:
                self._free.append(buffer)


def frame_base(blobs: BlobStore, digest: Digest) -> Digest | None:
    """The delta base a stored frame's header names (one ranged read); None for a full
    frame."""
    base = unpack_header(blobs.get_head(digest, MAX_HEADER_BYTES)).base_digest
    return None if base is None else Digest(base)


def fetch_into(blobs: BlobStore, digest: Digest, out: np.ndarray, *, verify: bool = True) -> None:
    """Fetch one blob and decode it into ``out``, verifying it there unless ``verify`` is off.

    The frame comes whole from ``BlobStore.get`` (one-off reads: maintenance, delta
    bases at save time); a load's jobs read it in place instead. A delta frame's base is
    fetched the same way. A frame that fails its check is fetched once more from the
    store when the first copy came from the local cache (which is then discarded): the
    store's copy decides.
    """
    _fetch_into(blobs, digest, out, verify=verify, in_place=False)


def _fetch_into(
    blobs: BlobStore,
    digest: Digest,
    out: np.ndarray,
    *,
    verify: bool,
    in_place: bool,
    from_store: bool = False,
    depth: int = 0,
    check_bases: bool = False,
) -> None:
    """Decode ``digest`` into ``out``, following its delta chain.

    With ``verify``, only the result is hashed at first: a base with a wrong byte cannot
    give a result that matches its digest, so checking each frame of a chain as well
    would only cost a hash per frame. If the result fails, the chain is decoded again
    with every frame checked (``check_bases``), which names the frame that is bad and,
    for a copy in the local cache, fetches the store's instead. A base kept by a load
    while a run is followed (``BlobStore.decoded``) is used as it is, except in that
    second pass. A blob file that decodes on its own and that this machine hashed since
    it booted, unchanged since, is not hashed again (``BlobStore.trusts``); one hashed
    now is recorded.
    """

    based: list[str] = []

    def base_bytes(base: str) -> np.ndarray:
        based.append(base)
        decoded = blobs.decoded if not check_bases else None
        kept = decoded.get(base, as_base=True) if decoded is not None else None
        if kept is not None:
            return kept
        if depth >= MAX_DECODE_DEPTH:
            raise IntegrityError(
                f"delta chain longer than {MAX_DECODE_DEPTH} frames, or looping", digest=digest
            )
        decoded = np.empty(out.size, dtype=np.uint8)
        _fetch_into(
            blobs,
            Digest(base),
            decoded,
            verify=verify and check_bases,
            in_place=in_place,
            depth=depth + 1,
            check_bases=check_bases,
        )
        return decoded

    try:
        if in_place:
            with blobs.reader(digest) as blob:
                hash_it = verify and not blobs.trusts(digest, blob)
                decode_blob_into(blob, out, digest=digest, get_base=base_bytes, verify=hash_it)
                if hash_it and not based:
                    blobs.note_verified(digest, blob)
        else:
            frame = blobs.get(digest)
            decode_frame_into(frame, out, digest=digest, get_base=base_bytes, verify=verify)
    except IntegrityError:
        if verify and not check_bases:
            _fetch_into(
                blobs, digest, out, verify=True, in_place=in_place, depth=depth, check_bases=True
            )
            return
        if from_store or not blobs.discard_cached(digest):
            raise
        _fetch_into(
            blobs,
            digest,
            out,
            verify=verify,
            in_place=in_place,
            from_store=True,
            depth=depth,
            check_bases=check_bases,
        )


def fetch_jobs(
    blobs: BlobStore,
    jobs: Sequence[BlobJob],
    destination: Destination,
    *,
    transfer: TransferOptions,
    verify: bool = True,
    on_bytes: Callable[[int], None] | None = None,
    on_entry: Callable[[str], None] | None = None,
) -> None:
    """Run ``jobs`` on ``transfer.workers`` threads within its in-flight byte budget.

    ``on_bytes`` gets each finished blob's decoded length and ``on_entry`` each entry whose
    pieces have all arrived, both on the calling thread (progress bars, device copies).
    """
    pool = ScratchPool()
    remaining = Counter(piece.entry for job in jobs for piece in job.pieces)
    decoded = blobs.decoded if isinstance(destination, MemoryDestination) else None

    def run(job: BlobJob) -> None:
        try:
            _run_job(blobs, job, destination, pool, verify, decoded)
        except CastoreError as exc:
            exc.tensor = exc.tensor or job.pieces[0].entry
            raise

    def finished(job: BlobJob, _: None) -> None:
        if on_bytes is not None:
            on_bytes(job.blob_length)
        for piece in job.pieces:
            remaining[piece.entry] -= 1
            if on_entry is not None and remaining[piece.entry] == 0:
                on_entry(piece.entry)

    bounded_map(
        run,
        jobs,
        size_of=lambda job: job.blob_length,
        workers=transfer.workers,
        max_in_flight_bytes=transfer.max_in_flight_bytes,
        on_result=finished,
    )


def _run_job(
    blobs: BlobStore,
    job: BlobJob,
    destination: Destination,
    pool: ScratchPool,
    verify: bool,
    decoded: DecodedBlobs | None,
) -> None:
    """Decode ``job``'s blob where its pieces go. While a run is followed (``decoded``), a
    blob kept from an earlier load is copied from memory, and one decoded and verified
    now is kept."""
    kept = decoded.get(job.digest) if decoded is not None else None
    if job.whole:
        piece = job.pieces[0]
        out = destination.view(piece.entry, piece.position, piece.length)
        if out is not None:
            if kept is not None:
                out[:] = kept
                return
            _fetch_into(blobs, job.digest, out, verify=verify, in_place=True)
            if decoded is not None and verify:
                decoded.keep(job.digest, out)
            return
    with pool.take(job.blob_length) as scratch:
        if kept is not None:
            scratch[:] = kept
        else:
            _fetch_into(blobs, job.digest, scratch, verify=verify, in_place=True)
            if decoded is not None and verify:
                decoded.keep(job.digest, scratch)
        for piece in job.pieces:
            data = scratch[piece.offset : piece.offset + piece.length]
            destination.write(piece.entry, piece.position, data)
