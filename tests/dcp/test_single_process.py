"""castore.dcp in one process (``no_dist=True``): round trips on memory and S3, the
metadata's JSON form, and the errors raised before DCP or castore write anything."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem, WriteItemType

import castore
from castore.dcp import StorageReader, StorageWriter
from castore.dcp.metadata import metadata_from_tree, metadata_to_tree

# DCP warns on every no_dist save and load that it assumes a single process: so do we.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _state() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "model": {
            "embed": torch.randn(64, 32, generator=generator),
            "head": torch.randn(32, generator=generator).to(torch.bfloat16),
            "scale": torch.tensor(2.5),
        },
        "optim": {"lr": 0.01, "betas": (0.9, 0.99), "name": "adam"},
    }


def _zeros_like(tree):
    if isinstance(tree, dict):
        return {key: _zeros_like(value) for key, value in tree.items()}
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return None


@pytest.fixture
def memory_url():
    url = f"memory://dcp-{uuid.uuid4().hex}"
    yield url
    location = castore.open(url).location
    location.fs.rm(location.root, recursive=True)


def test_round_trip_in_one_process(memory_url):
    state = _state()
    dcp.save(
        state, storage_writer=StorageWriter(memory_url, "r", 0, metrics={"loss": 2.0}), no_dist=True
    )
    loaded = _zeros_like(state)
    dcp.load(loaded, storage_reader=StorageReader(memory_url, "r"), no_dist=True)

    for name, tensor in state["model"].items():
        assert loaded["model"][name].dtype == tensor.dtype
        assert torch.equal(loaded["model"][name], tensor), name
    assert loaded["optim"] == {"lr": 0.01, "betas": (0.9, 0.99), "name": "adam"}


def test_unchanged_second_save_writes_no_blob_and_shows_like_any_checkpoint(memory_url):
    state = _state()
    for epoch, loss in ((0, 2.0), (1, 1.0)):
        writer = StorageWriter(memory_url, "r", epoch, step=10 * epoch, metrics={"loss": loss})
        dcp.save(state, storage_writer=writer, no_dist=True)
    store = castore.open(memory_url)
    run = store.run("r")
    first, second = run.record(0), run.record(1)
    assert first.new_blobs > 0
    assert first.logical_bytes == second.logical_bytes
    assert (second.new_blobs, second.new_bytes, second.parent_epoch) == (0, 0, 0)
    assert second.step == 10
    assert second.metrics == {"loss": 1.0}
    assert run.best("-loss") == 1
    assert run.checkpoints()["loss"].tolist() == [2.0, 1.0]

    tree = run.load(1)
    assert set(tree) == {"dcp", "items"}
    assert torch.equal(tree["items"]["model.embed"], state["model"]["embed"])
    assert tree["items"]["optim.name"].dtype == torch.uint8  # DCP's bytes, never unpickled
    assert set(tree["dcp"]["state_dict"]) == {
        "model.embed",
        "model.head",
        "model.scale",
        "optim.lr",
        "optim.betas",
        "optim.name",
    }
    json.dumps(tree["dcp"])  # plain values only
    assert store.verify().ok


def test_changed_tensor_is_stored_as_a_delta(memory_url):
    chunking = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
    state = {"w": torch.randn(4096, generator=torch.Generator().manual_seed(1))}
    dcp.save(
        state, storage_writer=StorageWriter(memory_url, "r", 0, chunking=chunking), no_dist=True
    )
    state["w"][:16] += 1e-3
    dcp.save(
        state, storage_writer=StorageWriter(memory_url, "r", 1, chunking=chunking), no_dist=True
    )

    record = castore.open(memory_url).run("r").record(1)
    (ref,) = record.tensors
    assert ref.name == "items.w"
    assert len(ref.chunks) == 4
    assert record.new_blobs == 1
    assert [chunk.base is not None for chunk in ref.chunks] == [True, False, False, False]
    loaded = {"w": torch.zeros(4096)}
    dcp.load(loaded, storage_reader=StorageReader(memory_url, "r", 1), no_dist=True)
    assert torch.equal(loaded["w"], state["w"])


def test_reads_fetch_only_the_chunks_they_need(memory_url):
    chunking = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
    full = torch.arange(64 * 64, dtype=torch.float32).reshape(64, 64)
    dcp.save(
        {"w": full},
        storage_writer=StorageWriter(memory_url, "r", 0, chunking=chunking),
        no_dist=True,
    )
    reader = StorageReader(memory_url, "r", 0)
    before = reader.store.transfer_stats()

    class Region:
        def __init__(self) -> None:
            self.got = None

        def resolve_tensor(self, item):
            return torch.empty(tuple(item.lengths))

        def commit_tensor(self, item, tensor):
            self.got = tensor

    metadata = reader.read_metadata()
    reader.set_up_storage_reader(metadata, True)
    index = MetadataIndex("w", [0, 0])
    item = ReadItem(
        LoadItemType.TENSOR,
        MetadataIndex("w"),
        torch.Size([0, 0]),
        index,
        torch.Size([20, 8]),
        torch.Size([3, 5]),
    )
    planner = Region()
    reader.read_data(LoadPlan([item]), planner).wait()
    assert torch.equal(planner.got, full[20:23, 8:13])
    fetched = reader.store.transfer_stats() - before
    assert fetched.blobs_downloaded == 1  # rows 20-22 lie in the 2nd of 16 chunks of 4 KiB


@dataclass
class Opaque:
    """A class DCP pickles into a bytes item: loading it runs code named by the store."""

    n: int


def test_pickled_objects_load_only_with_trust(memory_url):
    state = {"w": torch.ones(3), "obj": Opaque(3)}
    dcp.save(state, storage_writer=StorageWriter(memory_url, "r", 0), no_dist=True)
    loaded = {"w": torch.zeros(3), "obj": None}
    with pytest.raises(CheckpointException) as caught:  # DCP wraps what its steps raise
        dcp.load(loaded, storage_reader=StorageReader(memory_url, "r"), no_dist=True)
    ((error, _),) = caught.value.failures.values()
    assert isinstance(error, castore.UnsafeLoadError)
    assert error.tensor == "items.obj"
    assert loaded["obj"] is None
    dcp.load(loaded, storage_reader=StorageReader(memory_url, "r", trust=True), no_dist=True)
    assert loaded["obj"] == Opaque(3)


def test_on_s3(s3_server):
    url = s3_server.url(f"dcp-{uuid.uuid4().hex}")
    options = dict(s3_server.storage_options)
    state = _state()
    for epoch in (0, 1):
        dcp.save(state, storage_writer=StorageWriter(url, "r", epoch, **options), no_dist=True)
    loaded = _zeros_like(state)
    reader = StorageReader(url, "r", 1, cache=castore.CacheOptions(enabled=False), **options)
    dcp.load(loaded, storage_reader=reader, no_dist=True)
    assert torch.equal(loaded["model"]["embed"], state["model"]["embed"])
    assert reader.record.new_blobs == 0


def test_metadata_round_trips_as_plain_values():
    state = _state()
    writer_plan = dcp.DefaultSavePlanner()
    writer_plan.set_up_planner(state, None, True)
    local = writer_plan.create_local_plan()
    _, metadata = writer_plan.create_global_plan([local])
    entries = {item.index: f"items.{item.index.fqn}" for item in local.items}

    tree = metadata_to_tree(metadata, entries)
    again = metadata_from_tree(json.loads(json.dumps(tree)))
    assert again.state_dict_metadata == metadata.state_dict_metadata
    assert again.storage_data == entries
    assert {key: tuple(path) for key, path in again.planner_data.items()} == metadata.planner_data
    assert {item.type for item in local.items} == {WriteItemType.TENSOR, WriteItemType.BYTE_IO}


def test_committed_epoch_is_refused_before_any_write(memory_url):
    dcp.save(_state(), storage_writer=StorageWriter(memory_url, "r", 0), no_dist=True)
    with pytest.raises(castore.ConflictError, match="epoch 0 of run 'r' is already committed"):
        StorageWriter(memory_url, "r", 0)


def test_bad_input_is_refused_at_construction(memory_url):
    with pytest.raises(castore.InvalidCheckpointError, match="epoch"):
        StorageWriter(memory_url, "r", -1)
    with pytest.raises(castore.InvalidCheckpointError, match="metric"):
        StorageWriter(memory_url, "r", 0, metrics={"loss": "low"})
    with pytest.raises(castore.InvalidCheckpointError, match="checkpoint_id"):
        dcp.save(
            _state(),
            checkpoint_id="/tmp/x",
            storage_writer=StorageWriter(memory_url, "r", 0),
            no_dist=True,
        )
    assert castore.open(memory_url).runs() == []


def test_reader_errors_name_the_checkpoint(memory_url):
    store = castore.open(memory_url)
    with pytest.raises(castore.NotFoundError, match="no checkpoints"):
        StorageReader(memory_url, "r")
    store.run("plain").save({"w": torch.ones(3)}, epoch=0)
    with pytest.raises(castore.FormatError, match=r"not saved through castore.dcp"):
        StorageReader(memory_url, "plain", 0)
    with pytest.raises(castore.NotFoundError):
        StorageReader(memory_url, "plain", 5)


def test_both_storage_classes_refuse_a_checkpoint_id(memory_url):
    dcp.save(_state(), storage_writer=StorageWriter(memory_url, "r", 0), no_dist=True)
    reader = StorageReader(memory_url, "r")
    with pytest.raises(
        castore.InvalidCheckpointError,
        match=r"castore.dcp.StorageReader names its checkpoint by run and epoch; "
        r"do not pass checkpoint_id \('/tmp/x'\) to dcp.load",
    ):
        reader.reset("/tmp/x")
    reader.reset(None)
    writer = StorageWriter(memory_url, "r", 1)
    with pytest.raises(castore.InvalidCheckpointError, match=r"StorageWriter .* to dcp.save"):
        writer.reset("/tmp/x")
    assert not StorageReader.validate_checkpoint_id("/tmp/x")
    assert not StorageWriter.validate_checkpoint_id("/tmp/x")
