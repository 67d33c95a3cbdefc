"""Manifest parts are plain Parquet: pandas and DuckDB read them without castore.

The parts are written by a real save on a local store; the readers below get only the
path on disk, never a castore object.
"""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import castore
from castore.errors import InvalidCheckpointError
from castore.manifest.schema import (
    CHUNK_TYPE,
    FORMAT_VERSION,
    RESERVED_COLUMNS,
    SUMMARY_COLUMNS,
    TENSOR_TYPE,
    WIDE_COLUMNS,
    check_metric_name,
    part_schema,
)


@pytest.fixture
def saved(tmp_path):
    """A local store with run 'ppo': epoch 0 scored, epoch 1 with another metric."""
    store = castore.open(str(tmp_path))
    run = store.run("ppo")
    state = {"model": {"w": torch.ones(2, 3), "b": torch.zeros(3)}, "tag": "x"}
    run.save(state, epoch=0, step=100, metrics={"score": 0.5, "loss": 2.0})
    state["model"]["w"] = state["model"]["w"] * 2
    run.save(state, epoch=1, step=200, metrics={"avg_reward": 12.5})
    return tmp_path


def test_part_schema_layout():
    schema = part_schema(["avg_reward", "score"])
    assert schema.names == [
        "run",
        "epoch",
        "step",
        "created_at",
        "format_version",
        "parent_epoch",
        "n_tensors",
        "logical_bytes",
        "new_bytes",
        "stored_bytes",
        "new_blobs",
        "avg_reward",
        "score",
        "skeleton",
        "tensors",
    ]
    assert schema.field("score").type == pa.float64()
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("format_version").type == pa.int32()
    assert schema.field("tensors").type == pa.list_(TENSOR_TYPE)
    assert TENSOR_TYPE.field("chunks").type == pa.list_(CHUNK_TYPE)
    assert [f.name for f in CHUNK_TYPE] == [
        "digest",
        "offset",
        "length",
        "blob_length",
        "base",
        "ancestors",
    ]
    assert schema.metadata == {b"castore.format_version": b"2"}
    assert FORMAT_VERSION == 2
    assert set(SUMMARY_COLUMNS) | set(WIDE_COLUMNS) == RESERVED_COLUMNS
    assert WIDE_COLUMNS == ("skeleton", "tensors")


def test_part_is_readable_by_pandas(saved):
    frame = pd.read_parquet(saved / "runs" / "ppo" / "manifest" / "0000000000.parquet")
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["run"] == "ppo"
    assert row["epoch"] == 0
    assert row["step"] == 100
    assert row["score"] == 0.5
    assert row["loss"] == 2.0
    assert frame["score"].dtype == "float64"
    assert row["n_tensors"] == 2
    assert row["logical_bytes"] == 36
    assert [t["name"] for t in row["tensors"]] == ["model.w", "model.b"]
    assert str(frame["created_at"].dtype) == "datetime64[us, UTC]"


def test_part_metadata_names_the_format_version(saved):
    path = saved / "runs" / "ppo" / "manifest" / "0000000001.parquet"
    metadata = pq.read_schema(path).metadata
    assert metadata[b"castore.format_version"] == b"2"


def test_duckdb_reads_parts_with_union_by_name(saved):
    glob = f"{saved}/runs/ppo/manifest/*.parquet"
    rows = duckdb.sql(
        f"SELECT epoch, step, score, avg_reward, loss, parent_epoch "
        f"FROM read_parquet('{glob}', union_by_name=true) ORDER BY epoch"
    ).fetchall()
    assert rows == [(0, 100, 0.5, None, 2.0, None), (1, 200, None, 12.5, None, 0)]
    types = dict(
        duckdb.sql(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * "
            f"FROM read_parquet('{glob}', union_by_name=true))"
        ).fetchall()
    )
    assert types["score"] == "DOUBLE"
    assert types["avg_reward"] == "DOUBLE"
    assert types["epoch"] == "BIGINT"
    assert types["format_version"] == "INTEGER"


def test_duckdb_unnests_tensor_entries(saved):
    glob = f"{saved}/runs/ppo/manifest/*.parquet"
    rows = duckdb.sql(
        f"SELECT epoch, t.name, t.dtype, t.shape, len(t.chunks), t.chunks[1].blob_length "
        f"FROM (SELECT epoch, unnest(tensors) AS t "
        f"FROM read_parquet('{glob}', union_by_name=true)) ORDER BY epoch, t.name"
    ).fetchall()
    assert rows == [
        (0, "model.b", "f32", [3], 1, 36),
        (0, "model.w", "f32", [2, 3], 1, 36),
        (1, "model.b", "f32", [3], 1, 36),
        (1, "model.w", "f32", [2, 3], 1, 36),
    ]


def test_duckdb_query_across_runs(tmp_path):
    store = castore.open(str(tmp_path))
    for name, score in (("a", 0.1), ("b", 0.9)):
        store.run(name).save({"w": torch.ones(1)}, epoch=3, metrics={"score": score})
    rows = duckdb.sql(
        f"SELECT run, epoch, score FROM read_parquet('{tmp_path}/runs/*/manifest/*.parquet', "
        "union_by_name=true) WHERE score > 0.5"
    ).fetchall()
    assert rows == [("b", 3, 0.9)]


@pytest.mark.parametrize(
    "name", ["score", "avg_reward", "_x", "eval/return", "a.b:c-d", "S" * 128, "loss2"]
)
def test_good_metric_names(name):
    assert check_metric_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "2fast", "has space", "a\nb", "S" * 129, "-neg", "ünï", "a,b", "a;b", 3, None]
)
def test_bad_metric_names(name):
    with pytest.raises(InvalidCheckpointError) as info:
        check_metric_name(name)
    assert str(info.value) == (
        f"invalid metric name {name!r}: use up to 128 letters, digits and '_.:/-', "
        "starting with a letter or '_'"
    )


@pytest.mark.parametrize("name", sorted(RESERVED_COLUMNS))
def test_reserved_metric_names(name):
    with pytest.raises(InvalidCheckpointError, match=f"^metric name '{name}' is a manifest column"):
        check_metric_name(name)


def test_reserved_metric_names_are_refused_by_save(tmp_path):
    store = castore.open(str(tmp_path))
    with pytest.raises(InvalidCheckpointError, match="is a manifest column"):
        store.run("r").save({"w": torch.ones(1)}, epoch=0, metrics={"epoch": 1.0})
    assert not (tmp_path / "blobs").exists()
    assert store.run("r").epochs() == []
