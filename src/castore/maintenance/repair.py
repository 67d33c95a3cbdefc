"""Repair: restore missing or corrupt blobs from another copy, verified before and after.

The source is any location holding blob frames under ``blobs/``: a replica store, or a
machine's local blob cache directory. Digests name decoded content, so the source's
frame may be encoded differently and still be the right blob. A source frame that is a
delta against a base the store's manifests do not record for that blob is written as
a whole frame instead, so that what garbage collection keeps stays sufficient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from castore._concurrency import bounded_map
from castore.blobstore.digest import Digest
from castore.codec.frame import decode_frame_into, encode_frame_parts
from castore.codec.header import unpack_header
from castore.errors import BlobNotFoundError, CastoreError, FormatError, IntegrityError
from castore.maintenance.verify import check_blob, decode_blob

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore.blobstore.store import BlobStore
    from castore.maintenance.verify import BlobProblem

__all__ = ["RepairReport", "repair_blobs"]


@dataclass(frozen=True, slots=True)
class RepairReport:
    """Blobs written back and checked sound, and those that could not be, with why."""

    repaired: tuple[Digest, ...]
    failed: tuple[tuple[Digest, str], ...]

    @property
    def ok(self) -> bool:
        return not self.failed


def repair_blobs(
    problems: Sequence[BlobProblem], *, target: BlobStore, source: BlobStore, workers: int
) -> RepairReport:
    """Fetch each problem blob from ``source``, verify it, write it to ``target``, then
    check it again where it now lies (after every write, so bases are back first)."""
    copied = bounded_map(
        lambda problem: _copy(problem, target, source),
        problems,
        size_of=lambda _: 0,
        workers=workers,
        max_in_flight_bytes=1,
    )
    written = [p for p, why in zip(problems, copied, strict=True) if why is None]
    rechecked = bounded_map(
        lambda problem: check_blob(target, problem.target),
        written,
        size_of=lambda _: 0,
        workers=workers,
        max_in_flight_bytes=1,
    )
    failed = [(p.digest, why) for p, why in zip(problems, copied, strict=True) if why is not None]
    failed += [
        (p.digest, f"still {again.kind} after writing it back: {again.message}")
        for p, again in zip(written, rechecked, strict=True)
        if again is not None
    ]
    broken = {digest for digest, _ in failed}
    return RepairReport(
        repaired=tuple(p.digest for p in written if p.digest not in broken),
        failed=tuple(sorted(failed)),
    )


def _copy(problem: BlobProblem, target: BlobStore, source: BlobStore) -> str | None:
    """Write one verified blob from ``source`` to ``target``; the reason if impossible."""
    digest, length = problem.digest, problem.target.length
    try:
        frame = source.get(digest)
    except BlobNotFoundError:
        return "not in the source either"

    def base_bytes(base: str) -> np.ndarray:
        try:
            return decode_blob(source, Digest(base), length)
        except CastoreError:
            return decode_blob(target, Digest(base), length)

    data = np.empty(length, np.uint8)
    try:
        base = unpack_header(frame).base_digest
        decode_frame_into(frame, data, digest=digest, get_base=base_bytes)
    except (IntegrityError, FormatError) as exc:
        return f"the source's copy is unusable too: {exc.message}"
    parts = [frame] if base in (None, problem.target.base) else encode_frame_parts(data)
    target.put(digest, parts)
    return None
