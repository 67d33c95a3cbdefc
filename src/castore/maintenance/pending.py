"""Pending records: the candidates one garbage collection pass leaves for a later one.

A record lies at ``gc/pending-<us:016d>-<id:8 hex>.json``, named by when it was written
(microseconds since the Unix epoch), and is never modified. It is UTF-8 JSON::

    {"format": "castore-gc-pending", "version": 1, "created_at": "<ISO 8601>",
     "grace_s": 3600.0, "candidates": [["blobs/ab/cd/<digest>", <size>, <mtime_s>], ...]}

Each candidate is a key, its size and its modification time (seconds since the Unix
epoch) when it was recorded. ``BlobStore.has_many`` reads only the keys.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from castore.blobstore.layout import (
    GC_PREFIX,
    gc_pending_key,
    parse_blob_key,
    parse_gc_pending_name,
)
from castore.errors import CastoreError, ConflictError, IntegrityError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castore.blobstore.digest import Digest
    from castore.blobstore.location import Location

__all__ = [
    "PENDING_FORMAT",
    "PENDING_VERSION",
    "GcCandidate",
    "PendingRecord",
    "read_records",
    "write_record",
]

PENDING_FORMAT = "castore-gc-pending"
PENDING_VERSION = 1


@dataclass(frozen=True, slots=True)
class GcCandidate:
    """A key garbage collection may delete: a blob (``digest`` set) or a temporary file."""

    key: str
    size: int
    mtime_s: float

    @property
    def digest(self) -> Digest | None:
        return parse_blob_key(self.key)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record's key, its stamp (microseconds since the Unix epoch, from its name), and
    its candidates."""

    key: str
    created_us: int
    candidates: tuple[GcCandidate, ...]

    def is_older_than(self, grace_s: float, *, now_s: float) -> bool:
        """Stamped at least ``grace_s`` before ``now_s``, compared in whole microseconds
        as the stamp was taken, so a record stamped ``now`` is due at ``now`` with 0."""
        return self.created_us <= int((now_s - grace_s) * 1_000_000)


def read_records(location: Location) -> list[PendingRecord]:
    """Every pending record in the store, oldest first.

    Raises:
        IntegrityError: a record is malformed; nothing it lists may be deleted.
    """
    records = []
    for name in location.list_names(GC_PREFIX):
        created_us = parse_gc_pending_name(name)
        if created_us is None:
            continue
        key = f"{GC_PREFIX}/{name}"
        try:
            data = location.read(key)
        except NotFoundError:  # swept by a concurrent pass
            continue
        records.append(PendingRecord(key, created_us, _parse(data, key, location.url)))
    return sorted(records, key=lambda record: record.created_us)


def write_record(
    location: Location, candidates: Sequence[GcCandidate], *, grace_s: float, now: float | None
) -> str:
    """Create a record exclusively under a fresh key, stamped ``now`` (default: the time
    of writing); return its key."""
    for _ in range(3):
        stamp = time.time() if now is None else now
        body = {
            "format": PENDING_FORMAT,
            "version": PENDING_VERSION,
            "created_at": datetime.fromtimestamp(stamp, UTC).isoformat(),
            "grace_s": grace_s,
            "candidates": [[c.key, c.size, c.mtime_s] for c in candidates],
        }
        key = gc_pending_key(int(stamp * 1_000_000), uuid.uuid4().hex)
        try:
            location.write_exclusive(key, json.dumps(body).encode())
        except ConflictError:
            continue
        return key
    raise CastoreError("could not create a garbage collection record", url=location.url)


def _parse(data: bytes, key: str, url: str) -> tuple[GcCandidate, ...]:
    try:
        record = json.loads(data)
        kind = (record.get("format"), record.get("version"))
        candidates = tuple(
            GcCandidate(str(k), int(s), float(m)) for k, s, m in record["candidates"]
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _malformed(key, url, str(exc)) from exc
    if kind != (PENDING_FORMAT, PENDING_VERSION):
        raise _malformed(key, url, f"not a version {PENDING_VERSION} {PENDING_FORMAT} record")
    return candidates


def _malformed(key: str, url: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"garbage collection record {key} is unreadable ({why}); nothing it lists was "
        "deleted. Delete the record and run 'castore gc' again",
        url=url,
    )
