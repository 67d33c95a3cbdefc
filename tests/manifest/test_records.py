"""CheckpointRecord <-> Arrow: exact round trips; newer or malformed rows refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore.codec import hash_bytes
from castore.errors import FormatError, IntegrityError
from castore.manifest.records import CheckpointRecord, record_from_table, record_to_table
from castore.manifest.schema import RESERVED_COLUMNS
from castore.snapshot.refs import ChunkRef, Role, TensorRef

D1, D2, D3, D4 = (hash_bytes(bytes([i])) for i in range(4))
CREATED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)

TENSORS = (
    TensorRef("w", Role.TENSOR, "f32", (2, 3), (ChunkRef(D1, 0, 24, 24),), device="cuda:0"),
    TensorRef("tied", Role.ALIAS, "f32", (2, 3), base="w"),
    TensorRef(
        "x@storage", Role.STORAGE, "bf16", (6,), (ChunkRef(D2, 8, 12, 64, D3, ancestors=(D4,)),)
    ),
    TensorRef("x", Role.VIEW, "bf16", (2, 2), base="x@storage", storage_offset=1, stride=(3, 1)),
    TensorRef("empty", Role.TENSOR, "i64", (0, 5)),
    TensorRef("scalar", Role.TENSOR, "u8", (), (ChunkRef(D2, 0, 1, 64), ChunkRef(D1, 0, 0, 24))),
)


def make_record(**changes) -> CheckpointRecord:
    record = CheckpointRecord(
        run="ppo",
        epoch=40,
        step=12345,
        created_at=CREATED,
        parent_epoch=39,
        logical_bytes=37,
        new_bytes=12,
        stored_bytes=30,
        new_blobs=1,
        skeleton='{"dict":[["w",{"tensor":0}]]}',
        tensors=TENSORS,
        metrics={"score": 0.82, "avg_reward": -3.5},
    )
    return dataclasses.replace(record, **changes)


def test_record_round_trips_through_arrow():
    record = make_record()
    table = record_to_table(record)
    assert table.num_rows == 1
    assert record_from_table(table) == record


def test_table_columns():
    row = record_to_table(make_record()).to_pylist()[0]
    assert row["n_tensors"] == 5  # every entry but the storage one
    assert row["score"] == 0.82
    assert row["format_version"] == 2
    assert row["tensors"][2] == {
        "name": "x@storage",
        "role": "storage",
        "dtype": "bf16",
        "shape": [6],
        "device": "cpu",
        "base": None,
        "storage_offset": 0,
        "stride": [],
        "chunks": [
            {
                "digest": D2,
                "offset": 8,
                "length": 12,
                "blob_length": 64,
                "base": D3,
                "ancestors": [D4],
            }
        ],
    }


def test_digests_include_the_whole_delta_chain():
    assert make_record().digests() == {D1, D2, D3, D4}
    assert make_record(tensors=()).digests() == set()


def test_a_version_one_part_without_ancestors_reads_as_depth_one():
    table = record_to_table(make_record(format_version=1))
    tensors = table.column("tensors").to_pylist()[0]
    for tensor in tensors:
        for chunk in tensor["chunks"]:
            del chunk["ancestors"]
    old = table.set_column(table.schema.get_field_index("tensors"), "tensors", pa.array([tensors]))
    chunk = record_from_table(old).tensors[2].chunks[0]
    assert (chunk.base, chunk.ancestors, chunk.lineage) == (D3, (), (D3,))


def test_ancestors_without_a_base_are_refused():
    table = record_to_table(make_record())
    tensors = table.column("tensors").to_pylist()[0]
    tensors[2]["chunks"][0]["base"] = None
    forged = table.set_column(
        table.schema.get_field_index("tensors"), "tensors", pa.array([tensors])
    )
    with pytest.raises(IntegrityError, match="ancestors of a chunk without a base"):
        record_from_table(forged)


def test_optional_fields_round_trip_as_none():
    record = make_record(step=None, parent_epoch=None, metrics={})
    back = record_from_table(record_to_table(record))
    assert back == record
    assert back.step is None
    assert back.parent_epoch is None


@given(
    metrics=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,20}", fullmatch=True).filter(
            lambda name: name not in RESERVED_COLUMNS
        ),
        st.floats(allow_nan=False),
        max_size=5,
    ),
    epoch=st.integers(0, 10**10 - 1),
    step=st.none() | st.integers(0, 2**62),
)
def test_metrics_round_trip(metrics, epoch, step):
    record = make_record(metrics=metrics, epoch=epoch, step=step)
    assert record_from_table(record_to_table(record)) == record


def test_null_metric_values_are_dropped():
    table = pa.concat_tables(
        [record_to_table(make_record(metrics={"score": 1.0})), record_to_table(make_record())],
        promote_options="permissive",
    ).slice(0, 1)
    assert table.column("avg_reward").to_pylist() == [None]
    assert record_from_table(table).metrics == {"score": 1.0}


@pytest.mark.parametrize("version", [3, 99])
def test_newer_format_version_is_refused(version):
    table = record_to_table(make_record(format_version=version))
    with pytest.raises(FormatError) as info:
        record_from_table(table)
    assert str(info.value) == (
        f"manifest format version {version} is newer than this castore reads (2); upgrade castore"
    )


def test_older_format_version_is_read():
    assert record_from_table(record_to_table(make_record(format_version=0))).format_version == 0


@pytest.mark.parametrize(
    "bad",
    ["", "XYZ", D1.upper(), D1[:-1], D1 + "0", " " + D1[1:], "../../../etc/passwd"],
)
@pytest.mark.parametrize("field", ["digest", "base"])
def test_malformed_digests_are_refused(bad, field):
    chunk = ChunkRef(D1, 0, 24, 24)
    chunk = dataclasses.replace(chunk, **{field: bad})
    tensors = (TensorRef("w", Role.TENSOR, "f32", (2, 3), (chunk,)),)
    table = record_to_table(make_record(tensors=tensors))
    with pytest.raises(IntegrityError, match="manifest names a malformed blob digest"):
        record_from_table(table)


def test_two_rows_are_refused():
    table = pa.concat_tables([record_to_table(make_record())] * 2)
    with pytest.raises(IntegrityError, match="a manifest part must hold one row, this one holds 2"):
        record_from_table(table)


def test_unknown_role_is_integrity_error():
    table = record_to_table(make_record())
    rows = table.to_pylist()
    rows[0]["tensors"][0]["role"] = "hologram"
    forged = pa.Table.from_pylist(rows, schema=table.schema)
    with pytest.raises(IntegrityError, match="manifest part is malformed: ValueError"):
        record_from_table(forged)


def test_missing_column_is_integrity_error():
    table = record_to_table(make_record()).drop_columns(["new_blobs"])
    with pytest.raises(IntegrityError, match="manifest part is malformed: KeyError: 'new_blobs'"):
        record_from_table(table)


def test_non_numeric_metric_is_integrity_error():
    table = record_to_table(make_record()).append_column("note", pa.array(["text"]))
    with pytest.raises(IntegrityError, match="manifest part is malformed: ValueError"):
        record_from_table(table)
