"""How parts are encoded: zstd on the wide columns, the tensors column reused by identity."""

from __future__ import annotations

import dataclasses
import io

import pyarrow as pa
import pyarrow.parquet as pq

from castore.manifest.records import record_from_table, record_to_table
from castore.manifest.writer import encode_part
from castore.snapshot.refs import ChunkRef, Role, TensorRef
from tests.manifest.test_records import D1, D2, make_record


def columns_of(data: bytes) -> dict[str, pq.ColumnChunkMetaData]:
    group = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i) for i in range(group.num_columns)}


def test_wide_columns_are_zstd_and_no_column_has_a_dictionary():
    columns = columns_of(encode_part(make_record()))
    wide = [path for path in columns if path == "skeleton" or path.startswith("tensors.")]
    assert {"skeleton", "tensors.list.element.chunks.list.element.digest"} <= set(wide)
    assert {columns[path].compression for path in wide} == {"ZSTD"}
    assert {columns[path].compression for path in columns if path not in wide} == {"UNCOMPRESSED"}
    assert not any(c.has_dictionary_page for c in columns.values())


def test_part_reads_back_as_the_record():
    record = make_record()
    table = pq.ParquetFile(io.BytesIO(encode_part(record))).read()
    assert record_from_table(table) == record


def test_a_reused_tensors_tuple_encodes_the_same_and_a_new_one_its_own_refs():
    record = make_record()
    first = record_to_table(record)
    again = record_to_table(dataclasses.replace(record, epoch=41))
    assert again.column("tensors").equals(first.column("tensors"))
    assert again.column("epoch").to_pylist() == [41]
    changed = (
        TensorRef("w", Role.TENSOR, "f32", (2, 3), (ChunkRef(D2, 0, 24, 24, base=D1),)),
        *record.tensors[1:],
    )
    other = dataclasses.replace(record, tensors=changed)
    assert record_from_table(record_to_table(other)) == other
    # equal content in another tuple object: encoded from its own refs, equal again
    copy = tuple(dataclasses.replace(t) for t in record.tensors)
    assert record_to_table(dataclasses.replace(record, tensors=copy)).equals(first)


def test_many_records_in_turn_are_each_encoded_from_their_own_refs():
    records = [
        make_record(
            epoch=i,
            tensors=(TensorRef(f"t{i}", Role.TENSOR, "u8", (i,), (ChunkRef(D1, 0, i, 64),)),),
        )
        for i in range(1, 20)
    ]
    for _ in range(2):
        for record in records:
            assert record_from_table(record_to_table(record)) == record


def test_tables_keep_the_schema_types():
    table = record_to_table(make_record())
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("score").type == pa.float64()
    assert table.num_rows == 1
