"""Garbage collection without locks: two passes and a grace period.

Each pass (``plan_gc`` then ``GcPlan.execute``) does two things:

1. **Sweep.** A pending record stamped at least ``grace_s`` before this pass began is
   swept: each candidate that this pass's mark still finds unreferenced, and whose
   modification time has not changed since it was recorded (checked again just before
   its delete), is deleted; then the record itself. Nothing else is ever deleted.
2. **Record.** Unreferenced blobs, and temporary files of local writes, last modified at
   least ``grace_s`` ago and in no record yet become candidates, written to a new
   record (see ``pending``) stamped when it is written, after this pass's mark.

Between the sweep and the record, a pass puts back every blob a writer copied to
``gc/rescue/`` that is now missing. The check of a candidate's modification time and its
delete are two requests; a writer that rewrites a recorded blob in between would lose
it, so writers copy such a blob there first (``BlobStore.put``), and the copy outlives
the sweep that might have deleted the rewrite.

The mark reads every part of every run (digests and delta bases, from Parquet alone).
Why that is safe, given the one assumption that no save runs longer than ``grace_s``: a
save that relied on a candidate without writing it checked for it before the record
existed (``BlobStore.has_many`` counts recorded candidates as absent, so later saves
write them again, which changes their modification time), so it committed before the
sweeping pass's mark, which then finds the blob referenced. A blob that a surviving
unreferenced blob names as its delta base is kept as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore._concurrency import bounded_map
from castore.blobstore.layout import (
    GC_RESCUE_PREFIX,
    blob_key,
    is_temporary_key,
    parse_blob_key,
    parse_gc_rescue_key,
)
from castore.errors import IntegrityError, InvalidCheckpointError, NotFoundError
from castore.maintenance.pending import GcCandidate, read_records, write_record
from castore.maintenance.reachability import mark_reachable
from castore.snapshot.fetch import frame_base

if TYPE_CHECKING:
    from castore.blobstore.digest import Digest
    from castore.blobstore.location import Location
    from castore.blobstore.store import BlobStore

__all__ = ["GcPlan", "GcReport", "plan_gc"]

# Backends report modification times at different precisions (memory: a float from a
# listing, microseconds from a stat); closer than this counts as unchanged.
_SAME_TIME_S = 2e-6


@dataclass(frozen=True, slots=True)
class GcReport:
    """What a pass did (or, with ``dry_run``, would do). ``kept``: swept candidates
    found referenced or rewritten since they were recorded; ``waiting``: candidates of
    records younger than the grace period, left for a later pass; ``restored``: blobs
    put back from their rescue copies (a writer rewrote them during a sweep)."""

    dry_run: bool
    grace_s: float
    n_blobs: int
    n_referenced: int
    n_runs: int
    n_checkpoints: int
    deleted_blobs: int
    deleted_bytes: int
    deleted_temporaries: int
    kept: int
    pending_blobs: int
    pending_bytes: int
    pending_temporaries: int
    waiting: int
    pending_key: str | None
    restored: int = 0


@dataclass(frozen=True, slots=True)
class GcPlan:
    """One pass, planned: ``delete`` sweeps the ``swept`` records; ``record`` starts a new
    one. Planning writes nothing, so a plan is also the dry run."""

    url: str
    now_s: float
    grace_s: float
    n_blobs: int
    n_referenced: int
    n_runs: int
    n_checkpoints: int
    delete: tuple[GcCandidate, ...]
    kept: int
    swept: tuple[str, ...]
    record: tuple[GcCandidate, ...]
    waiting: int

    def preview(self) -> GcReport:
        """The report ``execute`` would give if nothing changed meanwhile."""
        return self._report(self.delete, kept=0, pending_key=None, dry_run=True)

    def execute(self, location: Location, *, workers: int, now: float | None = None) -> GcReport:
        """Delete, restore rescued blobs, remove the swept records, write the new one.

        The order matters: a save that finds a swept record gone finds its blobs gone
        too, and a rewrite that raced a delete is restored before anyone relies on the
        record's removal. The new record is stamped ``now``, by default when written.
        """

        def delete_if_unchanged(candidate: GcCandidate) -> bool:
            current = location.stat(candidate.key)
            if current is None or not _same_time(current.mtime_s, candidate.mtime_s):
                return False
            location.delete(candidate.key)
            return True

        done = bounded_map(
            delete_if_unchanged, self.delete, size_of=_zero, workers=workers, max_in_flight_bytes=1
        )
        restored = restore_rescued(location, older_than_s=self.now_s - self.grace_s)
        for key in self.swept:
            location.delete(key)
        pending_key = (
            write_record(location, self.record, grace_s=self.grace_s, now=now)
            if self.record
            else None
        )
        deleted = tuple(c for c, ok in zip(self.delete, done, strict=True) if ok)
        return self._report(
            deleted,
            kept=len(self.delete) - len(deleted),
            pending_key=pending_key,
            dry_run=False,
            restored=restored,
        )

    def _report(
        self,
        deleted: tuple[GcCandidate, ...],
        *,
        kept: int,
        pending_key: str | None,
        dry_run: bool,
        restored: int = 0,
    ) -> GcReport:
        blobs = [c for c in deleted if c.digest is not None]
        recorded = [c for c in self.record if c.digest is not None]
        return GcReport(
            dry_run=dry_run,
            grace_s=self.grace_s,
            n_blobs=self.n_blobs,
            n_referenced=self.n_referenced,
            n_runs=self.n_runs,
            n_checkpoints=self.n_checkpoints,
            deleted_blobs=len(blobs),
            deleted_bytes=sum(c.size for c in blobs),
            deleted_temporaries=len(deleted) - len(blobs),
            kept=self.kept + kept,
            pending_blobs=len(recorded),
            pending_bytes=sum(c.size for c in recorded),
            pending_temporaries=len(self.record) - len(recorded),
            waiting=self.waiting,
            pending_key=pending_key,
            restored=restored,
        )


def restore_rescued(location: Location, *, older_than_s: float) -> int:
    """Put back each blob with a rescue copy that is missing; return how many.

    Copies last modified at or before ``older_than_s`` (one grace period before the
    pass began) are removed after: the saves that wrote them have committed or died by
    then, and any pass that could have deleted their rewrite has restored it. Younger
    copies stay for a pass that may still be between a check and a delete.
    """
    restored = 0
    for key, stat in sorted(location.find_stats(GC_RESCUE_PREFIX).items()):
        digest = parse_gc_rescue_key(key)
        if digest is None:
            continue
        if not location.exists(blob_key(digest)):
            location.write(blob_key(digest), [location.read(key)])
            restored += 1
        if stat.mtime_s is not None and stat.mtime_s <= older_than_s:
            location.delete(key)
    return restored


def plan_gc(blobs: BlobStore, *, grace_s: float, workers: int, now: float | None = None) -> GcPlan:
    """Plan one pass over the store of ``blobs``: read records, mark, list; write nothing.

    ``now`` (seconds since the Unix epoch) stands in for the clock, for tests; by
    default the pass begins now. Blob ages come from the backend's modification times.

    Raises:
        IntegrityError: a manifest part or a pending record is unreadable; nothing is
            deleted until it is fixed.
        FormatError: a part was written by a newer castore.
    """
    if not grace_s >= 0:
        raise InvalidCheckpointError(f"grace_s must be a non-negative number, got {grace_s}")
    location = blobs.location
    now_s = time.time() if now is None else now
    records = read_records(location)
    eligible = [r for r in records if r.is_older_than(grace_s, now_s=now_s)]
    swept = {r.key for r in eligible}
    waiting = {c.key for r in records if r.key not in swept for c in r.candidates}
    reach = mark_reachable(location, workers=workers)
    listing = location.find_stats("")
    present = {d for key in listing if (d := parse_blob_key(key)) is not None}
    unreferenced = present - reach.referenced

    delete: dict[str, GcCandidate] = {}
    kept: set[str] = set()
    for candidate in (c for r in eligible for c in r.candidates):
        stat = listing.get(candidate.key)
        if stat is None or candidate.key in delete:
            continue  # gone already, or listed by two records
        if _same_time(stat.mtime_s, candidate.mtime_s) and candidate.digest not in reach.referenced:
            delete[candidate.key] = candidate
        else:
            kept.add(candidate.key)
    if delete:
        _keep_bases(blobs, unreferenced, waiting, delete, kept)

    known = waiting | set(delete)
    record = [
        GcCandidate(key, stat.size, stat.mtime_s)
        for key, stat in sorted(listing.items())
        if stat.mtime_s is not None
        and stat.mtime_s <= now_s - grace_s
        and key not in known
        and (parse_blob_key(key) in unreferenced or is_temporary_key(key))
    ]
    return GcPlan(
        url=location.url,
        now_s=now_s,
        grace_s=grace_s,
        n_blobs=len(present),
        n_referenced=len(present) - len(unreferenced),
        n_runs=reach.n_runs,
        n_checkpoints=reach.n_checkpoints,
        delete=tuple(delete.values()),
        kept=len(kept),
        swept=tuple(sorted(swept)),
        record=tuple(record),
        waiting=len(waiting),
    )


def _keep_bases(
    blobs: BlobStore,
    unreferenced: set[Digest],
    waiting: set[str],
    delete: dict[str, GcCandidate],
    kept: set[str],
) -> None:
    """Move out of ``delete`` every blob that a surviving unreferenced blob names as its
    delta base (a save in flight may be about to commit it), following bases further.

    Blobs of waiting records need no check: saves write those again rather than use them.
    """
    settled = waiting | set(delete)
    survivors = [d for d in unreferenced if blob_key(d) not in settled]
    while survivors:
        bases = {b for b in _bases(blobs, survivors) if blob_key(b) in delete}
        for base in bases:
            kept.add(blob_key(base))
            del delete[blob_key(base)]
        survivors = sorted(bases)


def _bases(blobs: BlobStore, digests: list[Digest]) -> set[Digest]:
    """The delta bases named by the frame headers of ``digests`` (one ranged read each)."""

    def base_of(digest: Digest) -> Digest | None:
        try:
            return frame_base(blobs, digest)
        except (NotFoundError, IntegrityError):
            return None  # gone meanwhile, or no readable header: it names no base

    found = bounded_map(
        base_of, digests, size_of=_zero, workers=blobs.transfer.workers, max_in_flight_bytes=1
    )
    return {base for base in found if base is not None}


def _same_time(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= _SAME_TIME_S


def _zero(_: object) -> int:
    return 0
