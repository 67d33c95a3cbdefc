"""Metrics attached after a commit (an evaluator's score), as their own immutable parts.

An annotation part holds one row: run, epoch, created_at, the ``created_at`` of the
checkpoint it annotates, and one float column per metric. It lies at
``runs/<run>/metrics/<epoch>-<created_us>-<id>.parquet``: a fresh key for every
annotation, so concurrent annotators and trainers never touch each other's files and
nothing is rewritten. On read, annotations overlay the checkpoint's own metrics by
epoch, later annotations over earlier ones, and only those written for that very commit:
an evaluator's score that lands after its checkpoint was forgotten never attaches to a
later save of the same epoch.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from castore.blobstore.layout import annotation_key, annotation_prefix, parse_annotation_name
from castore.errors import IntegrityError, InvalidCheckpointError, check_format_version
from castore.manifest.parquet import read_parquet_bytes
from castore.manifest.schema import RESERVED_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from castore.blobstore.location import Location

__all__ = ["ANNOTATION_VERSION", "AnnotationReader", "merge_metrics", "write_annotation"]

# Version 2 added ``checkpoint_created_at``; version 1 parts (without it) apply to
# whichever checkpoint holds their epoch.
ANNOTATION_VERSION = 2
_ANNOTATION_FIELDS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("format_version", pa.int32(), nullable=False),
    pa.field("checkpoint_created_at", pa.timestamp("us", tz="UTC"), nullable=False),
]
_OWN_COLUMNS = frozenset(field.name for field in _ANNOTATION_FIELDS)
# (epoch, created_us, the annotated commit's created_at or None for version 1, metrics)
_Annotation = tuple[int, int, datetime | None, dict[str, float]]


def write_annotation(
    location: Location,
    run: str,
    epoch: int,
    metrics: dict[str, float],
    *,
    checkpoint_created_at: datetime,
) -> str:
    """Write one annotation part for the commit of ``epoch`` made at
    ``checkpoint_created_at``; return its key."""
    clashes = sorted(_OWN_COLUMNS.intersection(metrics))
    if clashes:
        raise InvalidCheckpointError(f"metric names {clashes} are reserved for annotations")
    created_at = datetime.now(UTC)
    created_us = int(created_at.timestamp() * 1_000_000)
    names = sorted(metrics)
    schema = pa.schema(_ANNOTATION_FIELDS + [pa.field(n, pa.float64()) for n in names])
    row = {
        "run": run,
        "epoch": epoch,
        "created_at": created_at,
        "format_version": ANNOTATION_VERSION,
        "checkpoint_created_at": checkpoint_created_at,
        **{name: metrics[name] for name in names},
    }
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=schema), buffer, compression="zstd")
    key = annotation_key(run, epoch, created_us, uuid.uuid4().hex)
    location.write_exclusive(key, buffer.getvalue())
    return key


class AnnotationReader:
    """Reads a run's annotations, fetching each immutable part only once."""

    def __init__(self, location: Location, run: str) -> None:
        self.location = location
        self.run = run
        self._parsed: dict[str, _Annotation] = {}

    def metrics_by_epoch(self, commits: Mapping[int, datetime]) -> dict[int, dict[str, float]]:
        """Annotated metrics per epoch of ``commits`` (each committed epoch's
        ``created_at``), later annotations overriding earlier ones. Parts written for
        another commit of the epoch (one since forgotten) are left out."""
        prefix = annotation_prefix(self.run)
        current = []
        for name in self.location.list_names(prefix):
            parsed = parse_annotation_name(name)
            if parsed is None or parsed[0] not in commits:
                continue
            if name not in self._parsed:
                data = self.location.read(f"{prefix}/{name}")
                self._parsed[name] = (*parsed, *_parse(data, name))
            current.append(self._parsed[name])
        merged: dict[int, dict[str, float]] = {}
        for epoch, _, commit, metrics in sorted(current, key=lambda item: (item[0], item[1])):
            if commit is None or commit == commits[epoch]:
                merged.setdefault(epoch, {}).update(metrics)
        return merged


def merge_metrics(summary: pa.Table, annotations: dict[int, dict[str, float]]) -> pa.Table:
    """Overlay annotated metrics on a summary table (one row per epoch)."""
    if not annotations or summary.num_rows == 0:
        return summary
    epochs = summary.column("epoch").to_pylist()
    names = sorted({name for metrics in annotations.values() for name in metrics})
    for name in names:
        existing = (
            summary.column(name).to_pylist()
            if name in summary.column_names
            else [None] * len(epochs)
        )
        values = [
            annotations.get(epoch, {}).get(name, old)
            for epoch, old in zip(epochs, existing, strict=True)
        ]
        column = pa.array(values, pa.float64())
        if name in summary.column_names:
            summary = summary.set_column(summary.column_names.index(name), name, column)
        else:
            summary = summary.append_column(name, column)
    return summary


def _parse(data: bytes, name: str) -> tuple[datetime | None, dict[str, float]]:
    try:
        row = read_parquet_bytes(data).to_pylist()[0]
    except (pa.ArrowException, OSError, IndexError) as exc:
        raise IntegrityError(f"metrics part {name} is not readable Parquet: {exc}") from exc
    version = check_format_version(
        row.get("format_version"), ANNOTATION_VERSION, f"metrics part {name}:"
    )
    commit = row.get("checkpoint_created_at")
    if version >= 2 and not isinstance(commit, datetime):
        raise IntegrityError(f"metrics part {name} does not name the commit it annotates")
    try:
        metrics = {
            key: float(value)
            for key, value in row.items()
            if key not in _OWN_COLUMNS and key not in RESERVED_COLUMNS and value is not None
        }
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"metrics part {name} has a non-numeric metric: {exc}") from exc
    return commit, metrics
