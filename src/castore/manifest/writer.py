"""Committing a checkpoint: its manifest part, written last and exclusively.

Write ordering, the invariant the whole store rests on:
1. every blob the checkpoint references is written (idempotently) first;
2. then the part ``runs/<run>/manifest/<epoch>.parquet`` is created exclusively.

A checkpoint exists exactly when its part exists. A crash before step 2 leaves only
unreferenced blobs, which garbage collection removes; a part is never overwritten, so a
second writer of the same epoch gets ``ConflictError`` and changes nothing.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from castore.blobstore.layout import part_key
from castore.errors import ConflictError
from castore.manifest.records import CheckpointRecord, record_to_table
from castore.manifest.schema import TENSOR_TYPE

if TYPE_CHECKING:
    from castore.blobstore.location import Location

__all__ = ["encode_part", "write_part"]


def encode_part(record: CheckpointRecord) -> bytes:
    """The part's Parquet bytes, with plain (not dictionary) encoding and zstd only on the
    wide columns: a one-row part has hardly a repeated value for a dictionary to share,
    and the scalar columns hold one value each, which compression only wraps in a frame.
    Both halved the cost of encoding a large part and made it no larger."""
    buffer = io.BytesIO()
    pq.write_table(record_to_table(record), buffer, compression=_COMPRESSION, use_dictionary=False)
    return buffer.getvalue()


def _leaf_paths(name: str, kind: pa.DataType) -> list[str]:
    """Parquet leaf column paths of an Arrow column (lists become ``<name>.list.element``)."""
    if pa.types.is_list(kind):
        return _leaf_paths(f"{name}.list.element", kind.value_type)
    if pa.types.is_struct(kind):
        return [
            path
            for i in range(kind.num_fields)
            for path in _leaf_paths(f"{name}.{kind.field(i).name}", kind.field(i).type)
        ]
    return [name]


_COMPRESSION = dict.fromkeys(["skeleton", *_leaf_paths("tensors", pa.list_(TENSOR_TYPE))], "zstd")


def write_part(location: Location, record: CheckpointRecord) -> int:
    """Commit ``record``; return the part's size in bytes."""
    data = encode_part(record)
    try:
        location.write_exclusive(part_key(record.run, record.epoch), data)
    except ConflictError as exc:
        raise ConflictError(
            f"epoch {record.epoch} of run '{record.run}' is already committed; "
            "save under a new epoch or delete the old one first",
            run=record.run,
            epoch=record.epoch,
            url=location.url,
        ) from exc
    return len(data)
