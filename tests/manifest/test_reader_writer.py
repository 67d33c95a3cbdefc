"""Writing and reading parts through a Location: exclusive commits, listing, refusals."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from castore.blobstore import open_location
from castore.blobstore.layout import part_key
from castore.codec import hash_bytes
from castore.errors import (
    ConflictError,
    FormatError,
    IntegrityError,
    NotFoundError,
)
from castore.manifest import list_epochs, list_runs, read_part, read_summary, write_part
from castore.manifest.records import CheckpointRecord, record_to_table
from castore.manifest.writer import encode_part
from castore.snapshot.refs import ChunkRef, Role, TensorRef

D = hash_bytes(b"blob")


def make_record(run="ppo", epoch=0, **changes) -> CheckpointRecord:
    record = CheckpointRecord(
        run=run,
        epoch=epoch,
        step=7,
        created_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        parent_epoch=None,
        logical_bytes=8,
        new_bytes=8,
        stored_bytes=24,
        new_blobs=1,
        skeleton='{"dict":[["w",{"tensor":0}]]}',
        tensors=(TensorRef("w", Role.TENSOR, "f32", (2,), (ChunkRef(D, 0, 8, 8),)),),
        metrics={"score": 0.5},
    )
    return dataclasses.replace(record, **changes)


@pytest.fixture
def location(backend):
    return open_location(backend.url, backend.storage_options)


def test_write_then_read(backend, location):
    record = make_record(epoch=40)
    size = write_part(location, record)
    raw = backend.raw_fs.cat_file(backend.raw_path("runs/ppo/manifest/0000000040.parquet"))
    assert size == len(raw)
    assert raw[:4] == b"PAR1"
    assert raw == encode_part(record)
    assert read_part(location, "ppo", 40) == record


def test_a_committed_epoch_is_never_overwritten(backend, location):
    write_part(location, make_record(epoch=1, metrics={"score": 1.0}))
    with pytest.raises(ConflictError) as info:
        write_part(location, make_record(epoch=1, metrics={"score": 2.0}))
    error = info.value
    assert isinstance(error, FileExistsError)
    assert (error.run, error.epoch, error.url) == ("ppo", 1, backend.url)
    assert error.message == (
        "epoch 1 of run 'ppo' is already committed; save under a new epoch or delete the "
        "old one first"
    )
    assert read_part(location, "ppo", 1).metrics == {"score": 1.0}


def test_list_epochs_ignores_foreign_files(location):
    assert list_epochs(location, "ppo") == []
    for epoch in (10, 2, 300):
        write_part(location, make_record(epoch=epoch))
    prefix = "runs/ppo/manifest"
    location.write(f"{prefix}/notes.txt", [b"x"])
    location.write(f"{prefix}/0000000005.parquet.tmp-0123", [b"partial"])
    location.write(f"{prefix}/5.parquet", [b"x"])
    assert list_epochs(location, "ppo") == [2, 10, 300]


def test_list_runs(location):
    assert list_runs(location) == []
    write_part(location, make_record(run="b"))
    write_part(location, make_record(run="a", epoch=3))
    location.write("runs/empty/manifest/readme.txt", [b"no parts"])
    location.write("runs/bad name/manifest/0000000000.parquet", [encode_part(make_record())])
    location.write("runs/.hidden", [b"x"])
    assert list_runs(location) == ["a", "b"]


def test_list_runs_ignores_stray_files(location):
    # A file named like a run where its folder would be (runs/notes.txt) lists as nothing.
    write_part(location, make_record(run="a"))
    location.write("runs/notes.txt", [b"x"])
    assert list_runs(location) == ["a"]


def test_reading_a_missing_epoch(backend, location):
    write_part(location, make_record(epoch=0))
    with pytest.raises(NotFoundError) as info:
        read_part(location, "ppo", 1)
    assert (info.value.run, info.value.epoch) == ("ppo", 1)
    assert str(info.value) == (
        f"run 'ppo' has no checkpoint at epoch 1 [store={backend.url} run=ppo epoch=1]"
    )
    assert not isinstance(info.value, FileNotFoundError)


def test_a_part_at_the_wrong_path_is_refused(location):
    location.write(part_key("ppo", 5), [encode_part(make_record(run="ppo", epoch=6))])
    location.write(part_key("other", 6), [encode_part(make_record(run="ppo", epoch=6))])
    with pytest.raises(IntegrityError, match="part names run 'ppo' epoch 6, but lies at its own"):
        read_part(location, "ppo", 5)
    with pytest.raises(IntegrityError, match="part names run 'ppo' epoch 6") as info:
        read_part(location, "other", 6)
    assert (info.value.run, info.value.epoch) == ("other", 6)


@pytest.mark.parametrize("data", [b"", b"not parquet", b"PAR1" + bytes(100)])
def test_unreadable_parts_are_integrity_errors(location, data):
    location.write(part_key("ppo", 0), [data])
    with pytest.raises(IntegrityError, match="manifest part is not readable Parquet") as info:
        read_part(location, "ppo", 0)
    assert (info.value.run, info.value.epoch) == ("ppo", 0)


def test_a_truncated_part_is_an_integrity_error(location):
    data = encode_part(make_record())
    location.write(part_key("ppo", 0), [data[: len(data) // 2]])
    with pytest.raises(IntegrityError):
        read_part(location, "ppo", 0)


def test_a_newer_part_is_a_format_error(location):
    write_part(location, make_record(epoch=2, format_version=3))
    with pytest.raises(FormatError, match="manifest format version 3 is newer") as info:
        read_part(location, "ppo", 2)
    assert (info.value.run, info.value.epoch) == ("ppo", 2)
    with pytest.raises(FormatError, match="manifest format version 3 is newer") as info:
        read_summary(location, "ppo", 2)
    assert (info.value.run, info.value.epoch) == ("ppo", 2)


def test_malformed_digests_in_a_part_are_integrity_errors(location):
    bad = TensorRef("w", Role.TENSOR, "f32", (2,), (ChunkRef("ZZ" * 32, 0, 8, 8),))
    write_part(location, make_record(tensors=(bad,)))
    with pytest.raises(IntegrityError, match="manifest names a malformed blob digest 'ZZZZ") as e:
        read_part(location, "ppo", 0)
    assert (e.value.run, e.value.epoch) == ("ppo", 0)


def test_read_summary_drops_the_wide_columns(location):
    write_part(location, make_record(epoch=4))
    summary = read_summary(location, "ppo", 4)
    assert "skeleton" not in summary.column_names
    assert "tensors" not in summary.column_names
    assert summary.to_pylist()[0]["score"] == 0.5
    assert summary.column("epoch").to_pylist() == [4]


def test_foreign_writers_parts_are_read(location):
    """A part written by another tool (plain pyarrow) with an extra metric is readable."""
    table = record_to_table(make_record(epoch=9, metrics={}))
    table = table.add_column(11, "f1", pa.array([0.25], pa.float64()))
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="snappy")
    location.write(part_key("ppo", 9), [buffer.getvalue()])
    assert read_part(location, "ppo", 9).metrics == {"f1": 0.25}
