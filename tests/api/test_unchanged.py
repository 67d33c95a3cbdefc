"""Saving skips tensors whose version counter shows no change since the last save."""

from __future__ import annotations

import uuid

import pytest
import torch

import castore
import castore.api.save as save_module

CHUNKS = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)


@pytest.fixture
def hashed_bytes(monkeypatch):
    """Counts the bytes the save path hashes in full (sampled windows are not counted)."""
    counted = []
    original = save_module.hash_bytes

    def counting(data):
        counted.append(len(data))
        return original(data)

    monkeypatch.setattr(save_module, "hash_bytes", counting)
    return counted


def open_store(url: str, **options) -> castore.Store:
    return castore.open(url, chunking=CHUNKS, **options)


def model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 8))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_unchanged_resave_reads_nothing(hashed_bytes):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    model, _ = model_and_optimizer()
    first = run.save(model, epoch=0)
    assert sum(hashed_bytes) == first.logical_bytes
    hashed_bytes.clear()
    second = run.save(model, epoch=1)
    assert hashed_bytes == []
    assert second.blobs_written == 0
    assert run.record(1).tensors == run.record(0).tensors


def test_in_place_updates_are_seen(hashed_bytes):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    model, opt = model_and_optimizer()
    model[0].requires_grad_(False)
    run.save(model, epoch=0)
    hashed_bytes.clear()
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    run.save(model, epoch=1)
    # the trained layer's tensors share one pack with the frozen layer's small bias
    pack = sum(t.numel() * 4 for t in (model[0].bias, model[1].weight, model[1].bias))
    assert hashed_bytes == [pack]
    loaded = run.load(1)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_writes_through_data_are_caught_by_sampled_windows():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    weight = torch.zeros(64 * 1024 // 4)
    run.save({"w": weight}, epoch=0)
    weight.data[0] = 1.0  # .data bypasses the version counter
    info = run.save({"w": weight}, epoch=1)
    assert info.blobs_written == 1
    assert torch.equal(run.load(1)["w"], weight)


def test_reuse_can_be_turned_off_for_writes_the_samples_miss():
    weight = torch.zeros(64 * 1024 // 4)
    outside_windows = len(weight) // 4
    for reuse, expected in ((True, 0.0), (False, 1.0)):
        run = open_store(f"memory://{uuid.uuid4().hex}", reuse_unchanged=reuse).run("r")
        weight.zero_()
        run.save({"w": weight}, epoch=0)
        weight.data[outside_windows] = 1.0
        run.save({"w": weight}, epoch=1)
        assert run.load(1)["w"][outside_windows].item() == expected


def test_new_tensor_at_reused_memory_is_not_mistaken_for_the_old(hashed_bytes):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    for epoch in range(3):
        state = {"w": torch.full((32 * 1024,), float(epoch))}
        run.save(state, epoch=epoch)
        del state
    for epoch in range(3):
        assert run.load(epoch)["w"][0].item() == float(epoch)


def test_memo_is_ignored_when_another_writer_saved_in_between(hashed_bytes):
    url = f"memory://{uuid.uuid4().hex}"
    mine, theirs = open_store(url).run("r"), open_store(url).run("r")
    model, _ = model_and_optimizer()
    first = mine.save(model, epoch=0)
    theirs.save({"other": torch.ones(4)}, epoch=1)
    hashed_bytes.clear()
    mine.save(model, epoch=2)
    assert sum(hashed_bytes) == first.logical_bytes
    assert mine.record(2).tensors == mine.record(0).tensors
