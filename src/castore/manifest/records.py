"""CheckpointRecord: one manifest row as a Python value, and its Arrow form."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from castore.blobstore.digest import is_digest
from castore.errors import IntegrityError, check_format_version
from castore.manifest.schema import (
    FORMAT_VERSION,
    RESERVED_COLUMNS,
    TENSOR_TYPE,
    part_schema,
)
from castore.snapshot.refs import ChunkRef, Role, TensorRef

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["CheckpointRecord", "record_from_table", "record_to_table"]


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    run: str
    epoch: int
    step: int | None
    created_at: datetime
    parent_epoch: int | None
    logical_bytes: int
    new_bytes: int
    stored_bytes: int
    new_blobs: int
    skeleton: str
    tensors: tuple[TensorRef, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def digests(self) -> set[str]:
        """Every blob the checkpoint needs, delta bases included."""
        found: set[str] = set()
        for tensor in self.tensors:
            for chunk in tensor.chunks:
                found.add(chunk.digest)
                found.update(chunk.lineage)
        return found


def record_to_table(record: CheckpointRecord) -> pa.Table:
    metric_names = sorted(record.metrics)
    row: dict[str, Any] = {
        "run": record.run,
        "epoch": record.epoch,
        "step": record.step,
        "created_at": record.created_at,
        "format_version": record.format_version,
        "parent_epoch": record.parent_epoch,
        "n_tensors": sum(1 for t in record.tensors if t.role != Role.STORAGE),
        "logical_bytes": record.logical_bytes,
        "new_bytes": record.new_bytes,
        "stored_bytes": record.stored_bytes,
        "new_blobs": record.new_blobs,
        **{name: record.metrics[name] for name in metric_names},
        "skeleton": record.skeleton,
    }
    schema = _schema(tuple(metric_names))
    columns = [pa.array([row[f.name]], type=f.type) for f in schema if f.name != "tensors"]
    columns.append(_tensors_column(record.tensors))
    return pa.Table.from_arrays(columns, schema=schema)


@functools.lru_cache(maxsize=64)
def _schema(metric_names: tuple[str, ...]) -> pa.Schema:
    return part_schema(list(metric_names))


_TENSORS_TYPE = pa.list_(TENSOR_TYPE)
_COLUMN_CACHE_SIZE = 8
_columns: dict[int, tuple[tuple[TensorRef, ...], pa.Array]] = {}
_columns_lock = threading.Lock()


def _tensors_column(tensors: tuple[TensorRef, ...]) -> pa.Array:
    """The one-row ``tensors`` column. A checkpoint that reuses its parent's refs commits
    the very same tuple (immutable, of frozen refs), so the column is kept for the last
    few tuples by identity, holding each tuple so that its id is not reused meanwhile."""
    with _columns_lock:
        cached = _columns.get(id(tensors))
    if cached is not None and cached[0] is tensors:
        return cached[1]
    column = pa.array([[_tensor_row(t) for t in tensors]], type=_TENSORS_TYPE)
    with _columns_lock:
        _columns[id(tensors)] = (tensors, column)
        while len(_columns) > _COLUMN_CACHE_SIZE:
            del _columns[next(iter(_columns))]
    return column


def record_from_table(table: pa.Table) -> CheckpointRecord:
    """Parse a one-row part; inconsistent content raises IntegrityError, newer FormatError."""
    if table.num_rows != 1:
        raise IntegrityError(f"a manifest part must hold one row, this one holds {table.num_rows}")
    row = table.to_pylist()[0]
    version = check_format_version(row.get("format_version"), FORMAT_VERSION, "manifest")
    try:
        metrics = {
            name: float(value)
            for name, value in row.items()
            if name not in RESERVED_COLUMNS and value is not None
        }
        return CheckpointRecord(
            run=row["run"],
            epoch=int(row["epoch"]),
            step=row["step"],
            created_at=row["created_at"],
            parent_epoch=row["parent_epoch"],
            logical_bytes=int(row["logical_bytes"]),
            new_bytes=int(row["new_bytes"]),
            stored_bytes=int(row["stored_bytes"]),
            new_blobs=int(row["new_blobs"]),
            skeleton=row["skeleton"],
            tensors=tuple(_tensor_from_row(t) for t in row["tensors"]),
            metrics=metrics,
            format_version=version,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"manifest part is malformed: {type(exc).__name__}: {exc}") from exc


def _tensor_row(tensor: TensorRef) -> dict[str, Any]:
    return {
        "name": tensor.name,
        "role": str(tensor.role),
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "device": tensor.device,
        "base": tensor.base,
        "storage_offset": tensor.storage_offset,
        "stride": list(tensor.stride),
        "chunks": [
            {
                "digest": c.digest,
                "offset": c.offset,
                "length": c.length,
                "blob_length": c.blob_length,
                "base": c.base,
                "ancestors": list(c.ancestors),
            }
            for c in tensor.chunks
        ],
    }


def _tensor_from_row(row: dict[str, Any]) -> TensorRef:
    chunks = []
    for c in row["chunks"]:
        ancestors = tuple(c.get("ancestors") or ())  # absent before format version 2
        for digest in (c["digest"], c["base"], *ancestors):
            if digest is not None and not is_digest(digest):
                raise IntegrityError(f"manifest names a malformed blob digest {digest!r:.80}")
        if ancestors and c["base"] is None:
            raise IntegrityError("manifest lists delta ancestors of a chunk without a base")
        chunks.append(
            ChunkRef(c["digest"], c["offset"], c["length"], c["blob_length"], c["base"], ancestors)
        )
    return TensorRef(
        name=row["name"],
        role=Role(row["role"]),
        dtype=row["dtype"],
        shape=tuple(row["shape"]),
        chunks=tuple(chunks),
        base=row["base"],
        storage_offset=row["storage_offset"],
        stride=tuple(row["stride"]),
        device=row["device"],
    )
