"""Saving skips tensors whose version counter shows no change since the last save."""

from __future__ import annotations

import uuid

import pytest
import torch

import castore

CHUNKS = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)


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


# The same state saved again reuses the previous plan and checks every sampled window at
# once; the tests below save three times, so the last save checks against a memo that
# was itself carried over from such a save.


def three_saves(run, state, change):
    """Save ``state`` at epochs 0 and 1, ``change()`` it, save it at epoch 2."""
    run.save(state, epoch=0)
    run.save(state, epoch=1)
    change()
    return run.save(state, epoch=2)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_untracked_write_in_any_window_of_any_chunk_is_caught(hashed_bytes, where):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    chunk = CHUNKS.chunk_bytes // 4
    big = torch.zeros(4 * chunk)  # four chunks
    small = torch.zeros(16)  # packed
    index = {"start": 2 * chunk, "middle": 2 * chunk + chunk // 2, "end": 3 * chunk - 1}[where]

    def change():
        hashed_bytes.clear()
        big.data[index] = 1.0  # bypasses the version counter

    info = three_saves(run, {"big": big, "small": small}, change)
    assert info.blobs_written == 1
    assert hashed_bytes == [CHUNKS.chunk_bytes]  # the third chunk only
    assert torch.equal(run.load(2)["big"], big)


def test_untracked_write_through_numpy_to_a_packed_tensor_is_caught():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    small = torch.zeros(100)
    big = torch.zeros(CHUNKS.chunk_bytes // 4)
    info = three_saves(
        run, {"big": big, "small": small}, lambda: small.numpy().__setitem__(50, 7.0)
    )
    assert info.blobs_written == 1
    assert run.load(2)["small"][50].item() == 7.0


def test_caught_write_is_remembered_for_the_save_after(hashed_bytes):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    weight = torch.zeros(CHUNKS.chunk_bytes // 4)
    state = {"w": weight}
    three_saves(run, state, lambda: weight.data.fill_(2.0))
    hashed_bytes.clear()
    assert run.save(state, epoch=3).blobs_written == 0
    assert hashed_bytes == []
    weight.data.fill_(3.0)
    assert run.save(state, epoch=4).blobs_written == 1
    assert torch.equal(run.load(4)["w"], weight)


def test_fresh_state_dicts_of_an_unchanged_model_read_nothing(hashed_bytes):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    model, opt = model_and_optimizer()
    for epoch in range(3):
        run.save(model.state_dict(), epoch=epoch)  # new detached tensors each time
        if epoch == 0:
            hashed_bytes.clear()
    assert hashed_bytes == []
    assert run.record(2).tensors == run.record(0).tensors
    # the memo follows the new tensors: an optimizer step through them is seen
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    info = run.save(model.state_dict(), epoch=3)
    assert info.blobs_written > 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(run.load(3)[name], tensor), name


SIDE = 128


def same_memory_variants():
    """Tensors at or in the memory of ``weight`` (the first SIDE * SIDE elements of a
    larger buffer) that are not ``weight``; most keep its version counter."""
    return {
        "shape": lambda buf, w: w.view(SIDE // 2, -1),
        "dtype": lambda buf, w: w.view(torch.int32),
        "strides": lambda buf, w: w.t(),
        "offset": lambda buf, w: buf[1 : 1 + SIDE * SIDE].view(SIDE, SIDE),
        "storage": lambda buf, w: w.clone().add_(1.0),
    }


@pytest.mark.parametrize("variant", sorted(same_memory_variants()))
def test_a_changed_tensor_under_the_same_name_is_never_served_a_stale_ref(variant):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    buf = torch.arange(SIDE * SIDE + 1, dtype=torch.float32)
    weight = buf[: SIDE * SIDE].view(SIDE, SIDE)
    state = {"w": weight, "b": torch.ones(3)}
    run.save(state, epoch=0)
    run.save(state, epoch=1)
    changed = same_memory_variants()[variant](buf, weight)
    run.save({"w": changed, "b": state["b"]}, epoch=2)
    loaded = run.load(2)["w"]
    assert loaded.dtype == changed.dtype
    assert loaded.shape == changed.shape
    assert torch.equal(loaded, changed)
    assert torch.equal(run.load(1)["w"], weight)


@pytest.mark.parametrize(
    "second",
    [lambda buf, w: w.t(), lambda buf, w: buf[1 : 1 + SIDE * SIDE].view(SIDE, SIDE)],
    ids=["strides", "offset"],
)
def test_a_tie_that_becomes_another_view_of_the_storage_is_planned_again(second):
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    buf = torch.arange(SIDE * SIDE + 1, dtype=torch.float32)
    weight = buf[: SIDE * SIDE].view(SIDE, SIDE)
    run.save({"a": weight, "b": weight}, epoch=0)
    run.save({"a": weight, "b": weight}, epoch=1)
    other = second(buf, weight)
    run.save({"a": weight, "b": other}, epoch=2)
    loaded = run.load(2)
    assert torch.equal(loaded["a"], weight)
    assert torch.equal(loaded["b"], other)


def test_a_conjugate_view_is_saved_as_its_values():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    x = torch.complex(torch.arange(64.0), torch.ones(64))
    run.save({"x": x}, epoch=0)
    run.save({"x": x}, epoch=1)
    run.save({"x": x.conj()}, epoch=2)  # same memory and version, other values
    assert torch.equal(run.load(2)["x"], x.conj().resolve_conj())


def test_ties_that_appear_between_saves_are_planned_again():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    a, b = torch.randn(8), torch.randn(8)
    run.save({"a": a, "b": b}, epoch=0)
    run.save({"a": a, "b": b}, epoch=1)
    run.save({"a": a, "b": a}, epoch=2)
    loaded = run.load(2)
    assert torch.equal(loaded["b"], a)
    assert loaded["a"].data_ptr() == loaded["b"].data_ptr()


def test_the_guard_follows_a_tensor_to_its_new_memory():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    old = torch.zeros(CHUNKS.chunk_bytes // 4)
    run.save({"w": old}, epoch=0)
    run.save({"w": old}, epoch=1)
    new = torch.ones_like(old)  # same layout, other memory
    run.save({"w": new}, epoch=2)
    run.save({"w": new}, epoch=3)
    new.data[0] = 5.0
    assert run.save({"w": new}, epoch=4).blobs_written == 1
    assert torch.equal(run.load(4)["w"], new)
