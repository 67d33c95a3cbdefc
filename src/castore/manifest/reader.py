"""Listing and reading manifest parts. Parts are immutable, so callers may cache them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from castore.blobstore.layout import (
    RUNS_PREFIX,
    check_run_name,
    manifest_prefix,
    parse_part_name,
    part_key,
)
from castore.errors import (
    CastoreError,
    IntegrityError,
    InvalidCheckpointError,
    NotFoundError,
    check_format_version,
)
from castore.manifest.parquet import read_parquet_bytes
from castore.manifest.records import CheckpointRecord, record_from_table
from castore.manifest.schema import FORMAT_VERSION, WIDE_COLUMNS

if TYPE_CHECKING:
    from castore.blobstore.location import Location

__all__ = ["list_epochs", "list_runs", "read_part", "read_summary"]


def list_runs(location: Location) -> list[str]:
    """Names of runs with at least one committed checkpoint, sorted."""
    runs = []
    for name in location.list_names(RUNS_PREFIX):
        try:
            check_run_name(name)
        except InvalidCheckpointError:
            continue
        if list_epochs(location, name):
            runs.append(name)
    return runs


def list_epochs(location: Location, run: str) -> list[int]:
    """Committed epochs of ``run``, ascending; foreign and temporary files are ignored."""
    epochs = (parse_part_name(name) for name in location.list_names(manifest_prefix(run)))
    return sorted(epoch for epoch in epochs if epoch is not None)


def read_part(location: Location, run: str, epoch: int) -> CheckpointRecord:
    try:
        data = location.read(part_key(run, epoch))
    except NotFoundError as exc:
        raise NotFoundError(
            f"run '{run}' has no checkpoint at epoch {epoch}",
            run=run,
            epoch=epoch,
            url=location.url,
        ) from exc
    try:
        record = record_from_table(_parse(data))
    except CastoreError as exc:
        exc.run, exc.epoch = run, epoch
        raise
    if record.run != run or record.epoch != epoch:
        raise IntegrityError(
            f"part names run '{record.run}' epoch {record.epoch}, but lies at its own path",
            run=run,
            epoch=epoch,
        )
    return record


def read_summary(location: Location, run: str, epoch: int) -> pa.Table:
    """The part's row without the wide ``skeleton`` and ``tensors`` columns."""
    table = _parse(location.read(part_key(run, epoch)))
    check_format_version(
        table.column("format_version")[0].as_py(), FORMAT_VERSION, "manifest", run=run, epoch=epoch
    )
    return table.select([name for name in table.column_names if name not in WIDE_COLUMNS])


def _parse(data: bytes) -> pa.Table:
    try:
        return read_parquet_bytes(data)
    except (pa.ArrowException, OSError) as exc:
        raise IntegrityError(f"manifest part is not readable Parquet: {exc}") from exc
