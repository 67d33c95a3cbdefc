"""Metrics attached after a commit (an evaluator's score), as their own immutable parts.

An annotation part holds one row: run, epoch, created_at and one float column per
metric. It lies at ``runs/<run>/metrics/<epoch>-<created_us>-<id>.parquet``: a fresh key
for every annotation, so concurrent annotators and trainers never touch each other's
files and nothing is rewritten. On read, annotations overlay the checkpoint's own
metrics by epoch, later annotations over earlier ones.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from castore.blobstore.layout import annotation_key, annotation_prefix, parse_annotation_name
from castore.errors import FormatError, IntegrityError
from castore.manifest.parquet import read_parquet_bytes
from castore.manifest.schema import FORMAT_VERSION, RESERVED_COLUMNS

if TYPE_CHECKING:
    from castore.blobstore.location import Location

__all__ = ["AnnotationReader", "merge_metrics", "write_annotation"]

_ANNOTATION_FIELDS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("format_version", pa.int32(), nullable=False),
]
_OWN_COLUMNS = frozenset(field.name for field in _ANNOTATION_FIELDS)


def write_annotation(location: Location, run: str, epoch: int, metrics: dict[str, float]) -> str:
    """Write one annotation part; return its key."""
    created_at = datetime.now(UTC)
    created_us = int(created_at.timestamp() * 1_000_000)
    names = sorted(metrics)
    schema = pa.schema(_ANNOTATION_FIELDS + [pa.field(n, pa.float64()) for n in names])
    row = {
        "run": run,
        "epoch": epoch,
        "created_at": created_at,
        "format_version": FORMAT_VERSION,
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
        self._parsed: dict[str, tuple[int, int, dict[str, float]]] = {}

    def metrics_by_epoch(self) -> dict[int, dict[str, float]]:
        """Annotated metrics per epoch, later annotations overriding earlier ones."""
        prefix = annotation_prefix(self.run)
        current = []
        for name in self.location.list_names(prefix):
            parsed = parse_annotation_name(name)
            if parsed is None:
                continue
            if name not in self._parsed:
                data = self.location.read(f"{prefix}/{name}")
                self._parsed[name] = (*parsed, _parse(data, name))
            current.append(self._parsed[name])
        merged: dict[int, dict[str, float]] = {}
        for epoch, _, metrics in sorted(current, key=lambda item: (item[0], item[1])):
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


def _parse(data: bytes, name: str) -> dict[str, float]:
    try:
        row = read_parquet_bytes(data).to_pylist()[0]
    except (pa.ArrowException, OSError, IndexError) as exc:
        raise IntegrityError(f"metrics part {name} is not readable Parquet: {exc}") from exc
    version = row.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(
            f"metrics part {name} has format version {version}, newer than this castore "
            f"reads ({FORMAT_VERSION}); upgrade castore"
        )
    return {
        key: float(value)
        for key, value in row.items()
        if key not in _OWN_COLUMNS and key not in RESERVED_COLUMNS and value is not None
    }
