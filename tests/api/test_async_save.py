"""Asynchronous saves: return once copied to host memory, commit in the background."""

from __future__ import annotations

import threading
import uuid

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import castore
from castore.api import tensor_blobs
from castore.blobstore.store import BlobStore


def fresh_store() -> castore.Store:
    return castore.open(f"memory://{uuid.uuid4().hex}")


def test_async_save_commits_the_state_as_it_was_when_called(monkeypatch):
    store = fresh_store()
    run = store.run("r")
    weight = torch.zeros(64 * 1024)
    release = _held_puts(monkeypatch)
    handle = run.save({"w": weight, "tied": weight, "row": weight[:10]}, epoch=0, blocking=False)
    weight.add_(1.0)  # training goes on while the save runs
    assert not handle.done()
    assert run.epochs() == []
    release.set()
    info = handle.result(timeout=30)
    assert (info.epoch, handle.epoch) == (0, 0)
    loaded = run.load(0)
    assert torch.equal(loaded["w"], torch.zeros(64 * 1024))
    assert loaded["w"].untyped_storage().data_ptr() == loaded["row"].untyped_storage().data_ptr()


def _held_puts(monkeypatch) -> threading.Event:
    """Make every blob write wait until the returned event is set."""
    release = threading.Event()
    original_put = BlobStore.put

    def slow_put(self, digest, parts):
        release.wait(10)
        original_put(self, digest, parts)

    monkeypatch.setattr(BlobStore, "put", slow_put)
    return release


def test_async_save_copies_only_the_tensors_changed_since_the_last_save(monkeypatch):
    run = fresh_store().run("r")
    state = {"frozen": torch.randn(512 * 1024), "trained": torch.randn(512 * 1024)}
    run.save(state, epoch=0)
    copied = []
    real = tensor_blobs.frozen_bytes

    def recording(tensor):
        copied.append(tensor.data_ptr())
        return real(tensor)

    monkeypatch.setattr(tensor_blobs, "frozen_bytes", recording)
    state["trained"].add_(1.0)
    info = run.save(state, epoch=1, blocking=False).result(timeout=30)
    assert copied == [state["trained"].data_ptr()]
    assert info.new_bytes == state["trained"].nbytes  # the frozen 2 MiB were not written
    assert run.save(state, epoch=2, blocking=False).result(timeout=30).blobs_written == 0
    assert copied == [state["trained"].data_ptr()]  # nothing changed: nothing copied


def test_async_save_of_a_partly_changed_state_commits_it_as_it_was(monkeypatch):
    run = fresh_store().run("r")
    state = {"frozen": torch.randn(512 * 1024), "trained": torch.randn(512 * 1024)}
    run.save(state, epoch=0)
    state["trained"].add_(1.0)
    expected = {name: tensor.clone() for name, tensor in state.items()}
    release = _held_puts(monkeypatch)
    handle = run.save(state, epoch=1, blocking=False)
    state["trained"].add_(5.0)  # training goes on while the save runs
    state["frozen"].data.add_(3.0)  # even through .data, which the version counter misses
    assert not handle.done()
    release.set()
    assert handle.result(timeout=30).epoch == 1
    loaded = run.load(1)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    # The write through .data changed the sampled windows the save read: the next save
    # hashes "frozen" again rather than reuse its digest.
    run.save(state, epoch=2)
    assert torch.equal(run.load(2)["frozen"], state["frozen"])


def test_a_save_after_an_async_one_reuses_its_unchanged_tensors_unread(request):
    run = fresh_store().run("r")
    state = {"a": torch.randn(512 * 1024), "b": torch.randn(512 * 1024)}
    run.save(state, epoch=0, blocking=False).result(timeout=30)
    hashed = request.getfixturevalue("hashed_bytes")  # counting from here on
    info = run.save(state, epoch=1)
    assert (hashed, info.blobs_written) == ([], 0)


def test_next_save_waits_for_the_previous_one():
    store = fresh_store()
    run = store.run("r")
    handles = [
        run.save({"w": torch.full((1000,), float(e))}, epoch=e, blocking=False) for e in range(4)
    ]
    assert all(h.done() for h in handles[:-1])
    assert run.wait().epoch == 3
    assert run.wait() is None
    assert run.epochs() == [0, 1, 2, 3]
    assert run.record(3).parent_epoch == 2


def test_background_error_surfaces_on_handle_next_save_and_close(monkeypatch):
    store = fresh_store()
    run = store.run("r")

    def failing_put(self, digest, parts):
        raise castore.StorageError("injected: bucket gone")

    monkeypatch.setattr(BlobStore, "put", failing_put)
    handle = run.save({"w": torch.ones(10)}, epoch=0, blocking=False)
    with pytest.raises(castore.StorageError, match="injected") as caught:
        handle.result(timeout=30)
    assert "while saving run 'r' epoch 0" in caught.value.__notes__
    with pytest.raises(castore.StorageError, match="injected"):
        run.save({"w": torch.ones(10)}, epoch=1)
    assert run.epochs() == []

    run.save({"w": torch.ones(10)}, epoch=1, blocking=False)
    with pytest.raises(castore.StorageError, match="injected"):
        store.close()


def test_bad_input_fails_before_returning():
    run = fresh_store().run("r")
    with pytest.raises(castore.InvalidCheckpointError, match="to_dense"):
        run.save({"w": torch.ones(3).to_sparse()}, epoch=0, blocking=False)
    with pytest.raises(castore.InvalidCheckpointError, match="real number"):
        run.save({"w": torch.ones(3)}, epoch=0, metrics={"s": "x"}, blocking=False)
    assert run.wait() is None


def test_store_as_context_manager_waits_for_saves():
    with fresh_store() as store:
        handle = store.run("r").save({"w": torch.ones(100_000)}, epoch=0, blocking=False)
    assert handle.done()
    assert store.run("r").epochs() == [0]


def _change(tensor: torch.Tensor, data: st.DataObject) -> None:
    """An in-place change the version counter sees: to all of ``tensor`` or to a slice."""
    start = data.draw(st.integers(0, tensor.numel() - 1))
    end = data.draw(st.integers(start + 1, tensor.numel()))
    tensor[start:end].add_(1.0)


@given(data=st.data())
def test_async_and_blocking_saves_commit_each_state_as_it_was_called(data):
    sizes = data.draw(st.lists(st.integers(1, 3000), min_size=1, max_size=4), label="sizes")
    tensors = {f"t{i}": torch.randn(size) for i, size in enumerate(sizes)}
    state = dict(tensors)
    if data.draw(st.booleans(), label="tied"):
        state["tied"] = tensors["t0"]
    chunking = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
    store = castore.open(f"memory://{uuid.uuid4().hex}", chunking=chunking)
    names = st.sets(st.sampled_from(sorted(tensors)))
    expected = []
    with pytest.MonkeyPatch.context() as patch:
        release = _held_puts(patch)
        run = store.run("r")
        for epoch in range(data.draw(st.integers(1, 5), label="saves")):
            for name in data.draw(names, label="changed before"):
                _change(tensors[name], data)
            expected.append({name: tensor.clone() for name, tensor in state.items()})
            if data.draw(st.booleans(), label="blocking"):
                release.set()
                run.save(state, epoch=epoch)
                continue
            release.clear()
            handle = run.save(state, epoch=epoch, blocking=False)
            for name in data.draw(names, label="changed while saving"):
                _change(tensors[name], data)
            for name in data.draw(names, label="written through .data while saving"):
                tensors[name].data.add_(1.0)  # every byte moves: the next save's windows see it
            release.set()
            handle.result(timeout=30)
    for epoch, want in enumerate(expected):
        loaded = run.load(epoch)
        assert sorted(loaded) == sorted(want)
        for name, tensor in want.items():
            assert torch.equal(loaded[name], tensor), (epoch, name)
        if "tied" in want:
            assert loaded["tied"].untyped_storage().data_ptr() == loaded["t0"].data_ptr()
