"""The one Parquet schema of a manifest part, and the format version it carries.

A part has exactly one row. Metric columns (float64, one per metric name) sit between
the bookkeeping columns and the two wide ones, ``skeleton`` and ``tensors``, so
``SELECT *`` reads well and summaries can skip the wide columns.
"""

from __future__ import annotations

import re

import pyarrow as pa

from castore.errors import InvalidCheckpointError

__all__ = [
    "CHUNK_TYPE",
    "FORMAT_VERSION",
    "RESERVED_COLUMNS",
    "SUMMARY_COLUMNS",
    "TENSOR_TYPE",
    "WIDE_COLUMNS",
    "check_metric_name",
    "part_schema",
]

FORMAT_VERSION = 2

CHUNK_TYPE = pa.struct(
    [
        pa.field("digest", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("blob_length", pa.int64(), nullable=False),
        pa.field("base", pa.string()),
        pa.field("ancestors", pa.list_(pa.string()), nullable=False),
    ]
)

TENSOR_TYPE = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("device", pa.string(), nullable=False),
        pa.field("base", pa.string()),
        pa.field("storage_offset", pa.int64(), nullable=False),
        pa.field("stride", pa.list_(pa.int64()), nullable=False),
        pa.field("chunks", pa.list_(CHUNK_TYPE), nullable=False),
    ]
)

_SUMMARY_FIELDS = [
    pa.field("run", pa.string(), nullable=False),
    pa.field("epoch", pa.int64(), nullable=False),
    pa.field("step", pa.int64()),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("format_version", pa.int32(), nullable=False),
    pa.field("parent_epoch", pa.int64()),
    pa.field("n_tensors", pa.int64(), nullable=False),
    pa.field("logical_bytes", pa.int64(), nullable=False),
    pa.field("new_bytes", pa.int64(), nullable=False),
    pa.field("stored_bytes", pa.int64(), nullable=False),
    pa.field("new_blobs", pa.int64(), nullable=False),
]
_WIDE_FIELDS = [
    pa.field("skeleton", pa.string(), nullable=False),
    pa.field("tensors", pa.list_(TENSOR_TYPE), nullable=False),
]

SUMMARY_COLUMNS = tuple(field.name for field in _SUMMARY_FIELDS)
WIDE_COLUMNS = tuple(field.name for field in _WIDE_FIELDS)
RESERVED_COLUMNS = frozenset(SUMMARY_COLUMNS + WIDE_COLUMNS)

_METRIC_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,127}")


def check_metric_name(name: object) -> str:
    """Metric names become column names: identifier-like, and not a reserved column."""
    if not isinstance(name, str) or not _METRIC_NAME_RE.fullmatch(name):
        raise InvalidCheckpointError(
            f"invalid metric name {name!r}: use up to 128 letters, digits and '_.:/-', "
            "starting with a letter or '_'"
        )
    if name in RESERVED_COLUMNS:
        raise InvalidCheckpointError(
            f"metric name {name!r} is a manifest column; choose another name "
            f"(reserved: {', '.join(sorted(RESERVED_COLUMNS))})"
        )
    return name


def part_schema(metric_names: list[str]) -> pa.Schema:
    metric_fields = [pa.field(name, pa.float64()) for name in metric_names]
    return pa.schema(
        _SUMMARY_FIELDS + metric_fields + _WIDE_FIELDS,
        metadata={b"castore.format_version": str(FORMAT_VERSION).encode()},
    )
