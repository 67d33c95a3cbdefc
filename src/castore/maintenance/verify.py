"""Verify: every blob the manifests reference exists and decodes to its digest.

Blobs are read from the store itself, never from a local cache, decoded (a delta frame
with the chain of bases below it) and hashed, concurrently. Each problem names the blob and every
checkpoint and tensor that needs it, so an operator knows what a loss costs; a broken
delta base is reported once, on the base, with the tensors of every delta built on it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from castore._concurrency import bounded_map
from castore.blobstore.digest import Digest
from castore.codec.frame import decode_frame_into
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    FormatError,
    IntegrityError,
    NotFoundError,
)
from castore.maintenance.reachability import list_parts
from castore.manifest.reader import read_part
from castore.snapshot.fetch import fetch_into
from castore.snapshot.refs import Role

if TYPE_CHECKING:
    from castore.blobstore.location import Location
    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord
    from castore.snapshot.refs import TensorRef

__all__ = [
    "BlobProblem",
    "BlobTarget",
    "BlobUse",
    "PartProblem",
    "VerifyPlan",
    "VerifyReport",
    "check_blob",
    "decode_blob",
    "plan_verify",
]


@dataclass(frozen=True, slots=True, order=True)
class BlobUse:
    """A tensor of a checkpoint that needs a blob."""

    run: str
    epoch: int
    tensor: str


@dataclass(frozen=True, slots=True)
class BlobTarget:
    """A blob to check: its decoded length and the delta base the manifests record."""

    digest: Digest
    length: int
    base: str | None
    uses: tuple[BlobUse, ...]


@dataclass(frozen=True, slots=True)
class BlobProblem:
    """A blob that is ``missing`` or ``corrupt``, and what needs it."""

    target: BlobTarget
    kind: Literal["missing", "corrupt"]
    message: str

    @property
    def digest(self) -> Digest:
        return self.target.digest


@dataclass(frozen=True, slots=True)
class PartProblem:
    """A manifest part that cannot be read: its whole checkpoint is unusable."""

    run: str
    epoch: int
    message: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    run: str | None
    n_checkpoints: int
    n_blobs: int
    n_bytes: int
    problems: tuple[BlobProblem, ...]
    part_problems: tuple[PartProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.part_problems

    def affected(self) -> dict[tuple[str, int], list[str]]:
        """Each damaged checkpoint (run, epoch) with the tensors it cannot load."""
        found: dict[tuple[str, int], set[str]] = defaultdict(set)
        for problem in self.problems:
            for use in problem.target.uses:
                found[use.run, use.epoch].add(use.tensor)
        return {key: sorted(found[key]) for key in sorted(found)}


@dataclass(frozen=True, slots=True)
class VerifyPlan:
    """Every blob to check, with the checkpoints that need it; parts already unreadable."""

    run: str | None
    n_checkpoints: int
    targets: tuple[BlobTarget, ...]
    part_problems: tuple[PartProblem, ...]

    def execute(self, blobs: BlobStore, *, workers: int, max_in_flight_bytes: int) -> VerifyReport:
        """Read, decode and hash every target from ``blobs`` (give it one without cache)."""
        found = bounded_map(
            lambda target: check_blob(blobs, target),
            self.targets,
            size_of=lambda target: 2 * target.length,
            workers=workers,
            max_in_flight_bytes=max_in_flight_bytes,
        )
        return VerifyReport(
            run=self.run,
            n_checkpoints=self.n_checkpoints,
            n_blobs=len(self.targets),
            n_bytes=sum(target.length for target in self.targets),
            problems=tuple(problem for problem in found if problem is not None),
            part_problems=self.part_problems,
        )


def plan_verify(location: Location, *, run: str | None = None, workers: int) -> VerifyPlan:
    """Read every part (of ``run``, or of the whole store) and list the blobs they need.

    Raises:
        NotFoundError: ``run`` has no checkpoints.
    """
    parts = list_parts(location, run)
    if run is not None and not parts:
        raise NotFoundError(f"run '{run}' has no checkpoints", run=run, url=location.url)

    def read(part: tuple[str, int]) -> CheckpointRecord | PartProblem | None:
        try:
            return read_part(location, *part)
        except NotFoundError:
            return None  # forgotten since the listing
        except (IntegrityError, FormatError) as exc:
            return PartProblem(part[0], part[1], exc.message)

    results = bounded_map(read, parts, size_of=lambda _: 0, workers=workers, max_in_flight_bytes=1)
    records = [r for r in results if r is not None and not isinstance(r, PartProblem)]
    uses: dict[str, set[BlobUse]] = defaultdict(set)
    lengths: dict[str, int] = {}
    bases: dict[str, str | None] = {}
    for record in records:
        users = _users(record.tensors)
        for ref in record.tensors:
            names = [BlobUse(record.run, record.epoch, name) for name in users[ref.name]]
            for chunk in ref.chunks:
                chain = (chunk.digest, *chunk.lineage)
                for digest, base in zip(chain, (*chain[1:], None), strict=True):
                    uses[digest].update(names)
                    lengths.setdefault(digest, chunk.blob_length)
                    bases.setdefault(digest, base)
    return VerifyPlan(
        run=run,
        n_checkpoints=len(records),
        targets=tuple(
            BlobTarget(Digest(d), lengths[d], bases.get(d), tuple(sorted(uses[d])))
            for d in sorted(uses)
        ),
        part_problems=tuple(r for r in results if isinstance(r, PartProblem)),
    )


def check_blob(blobs: BlobStore, target: BlobTarget) -> BlobProblem | None:
    """Decode and hash one blob; None when it is sound.

    A delta whose recorded base cannot be read is not reported: the base is a target
    of its own and carries the delta's uses.
    """
    try:
        frame = blobs.get(target.digest)
    except BlobNotFoundError:
        return BlobProblem(target, "missing", "the blob is missing from the store")

    def base_bytes(base: str) -> np.ndarray:
        try:
            return decode_blob(blobs, Digest(base), target.length)
        except CastoreError as exc:
            raise _BaseUnreadableError(base, exc) from exc

    try:
        decode_frame_into(
            frame, np.empty(target.length, np.uint8), digest=target.digest, get_base=base_bytes
        )
    except _BaseUnreadableError as exc:
        if exc.base == target.base:
            return None
        return BlobProblem(target, "corrupt", f"its delta base {exc.base[:12]}… is unreadable")
    except (IntegrityError, FormatError) as exc:
        # The first clause says what is wrong; the rest is advice to run verify.
        return BlobProblem(target, "corrupt", exc.message.split("; ", 1)[0])
    return None


def decode_blob(blobs: BlobStore, digest: Digest, length: int) -> np.ndarray:
    """One blob's verified decoded bytes (``length`` of them), following delta bases; a
    corrupt copy from a local cache is dropped and read again from the store."""
    out = np.empty(length, np.uint8)
    fetch_into(blobs, digest, out)
    return out


class _BaseUnreadableError(Exception):
    def __init__(self, base: str, cause: CastoreError) -> None:
        super().__init__(f"delta base {base[:12]}… is unreadable: {cause}")
        self.base = base


def _users(tensors: tuple[TensorRef, ...]) -> dict[str, list[str]]:
    """For each entry, the names a user sees that read its bytes: itself, its aliases,
    or (for a storage entry) its views."""
    users: dict[str, list[str]] = {ref.name: [] for ref in tensors}
    for ref in tensors:
        if ref.role == Role.TENSOR:
            users[ref.name].append(ref.name)
        elif ref.role in (Role.ALIAS, Role.VIEW) and ref.base in users:
            users[ref.base].append(ref.name)
    for ref in tensors:
        if not users[ref.name]:
            users[ref.name].append(ref.name)
    return users
