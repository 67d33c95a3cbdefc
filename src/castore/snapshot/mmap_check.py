"""Trusting a layout file before it is reused: its bytes must still be the blobs' bytes.

A file is renamed into place only once every blob in it was verified, so within one boot
the page cache serves exactly those bytes. Without an fsync (which would cost as much as
writing the file), a power loss can still leave a renamed file with ranges that read as
zeros. So a file written or checked during this boot gets a marker,
``<name>.bin.<boot id>.ok``; a reuse without one (after a reboot, or where there is no
boot id) re-hashes what it will map: the pieces of each blob are read back (``pread``
into a scratch buffer, so nothing stays resident) and, where together they make up the
whole blob, hashed against its digest. A blob only part of which is in the file (a pack
shared with tensors not selected) is fetched and decoded, and its pieces compared with
the file's bytes.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import numpy as np

from castore._concurrency import bounded_map
from castore.blobstore.digest import short
from castore.blobstore.verified import boot_id
from castore.codec.hashing import hash_bytes
from castore.errors import IntegrityError
from castore.snapshot.fetch import ScratchPool, fetch_into

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from castore._config import TransferOptions
    from castore.blobstore.store import BlobStore
    from castore.snapshot.fetch import BlobJob

__all__ = ["check_file", "mark_verified", "marker", "verified_this_boot"]


def marker(path: str) -> str | None:
    """The name of ``path``'s verified-this-boot marker; None without a boot id."""
    boot = boot_id()
    return None if boot is None else f"{path}.{boot}.ok"


def verified_this_boot(path: str) -> bool:
    name = marker(path)
    return name is not None and os.path.exists(name)


def mark_verified(path: str, verified: bool) -> None:
    """Record (or, when not ``verified``, withdraw) that ``path`` holds verified bytes."""
    name = marker(path)
    if name is None:
        return
    if verified:
        with open(name, "wb"):
            pass
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def check_file(
    fd: int,
    offsets: Mapping[str, int],
    jobs: Sequence[BlobJob],
    blobs: BlobStore,
    transfer: TransferOptions,
) -> None:
    """Raise IntegrityError unless every piece of ``jobs`` in the file holds its blob's bytes.

    ``offsets`` gives each entry's offset in the file open as ``fd``.
    """
    pool = ScratchPool()

    def read(out: np.ndarray, entry: str, position: int) -> np.ndarray:
        view, offset = memoryview(out), offsets[entry] + position
        while view.nbytes:
            got = _pread_into(fd, view, offset)
            if got == 0:
                raise IntegrityError("mapped file ends early")
            view, offset = view[got:], offset + got
        return out

    def check(job: BlobJob) -> None:
        ranges = sorted({(piece.offset, piece.length) for piece in job.pieces})
        ends = [0, *(offset + length for offset, length in ranges)]
        tiles = [offset for offset, _ in ranges] == ends[:-1] and ends[-1] == job.blob_length
        with pool.take(job.blob_length) as blob:
            if not tiles:
                fetch_into(blobs, job.digest, blob)
            filled: set[tuple[int, int]] = set()
            for piece in job.pieces:
                expected = blob[piece.offset : piece.offset + piece.length]
                if tiles and (piece.offset, piece.length) not in filled:
                    read(expected, piece.entry, piece.position)
                    filled.add((piece.offset, piece.length))
                    continue
                with pool.take(piece.length) as found:
                    if not np.array_equal(read(found, piece.entry, piece.position), expected):
                        raise IntegrityError(
                            "mapped file differs from its blob", tensor=piece.entry
                        )
            if tiles and hash_bytes(blob) != job.digest:
                raise IntegrityError(
                    f"mapped file no longer holds blob {short(job.digest)}",
                    tensor=job.pieces[0].entry,
                )

    bounded_map(
        check,
        jobs,
        size_of=lambda job: job.blob_length,
        workers=transfer.workers,
        max_in_flight_bytes=transfer.max_in_flight_bytes,
    )


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """``preadv`` into ``view`` where the platform has it, else ``pread`` and a copy."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], offset)
    data = os.pread(fd, view.nbytes, offset)
    view[: len(data)] = data
    return len(data)
