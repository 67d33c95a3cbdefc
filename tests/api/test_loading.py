"""Loads for evaluators: mmap, partial (keys=), lazy (ckpt[name]), verify=False, devices.

Blob fetches are counted with ``store.transfer_stats()``: a plain store counts every
``BlobStore.get`` as a download, a cached one splits downloads from cache hits.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict

import fsspec
import pytest
import torch

import castore
import castore.codec.frame as frame_module
import castore.snapshot.mmap_check as mmap_check
import castore.snapshot.mmap_file as mmap_file
from castore._config import CACHE_DIR_ENV
from castore.snapshot.mmap_file import ALIGNMENT, plan_layout
from tests.spies import record_digests
from tests.strategies import (
    COMPLEX_HALF_WARNING,
    SUPPORTED_DTYPES,
    assert_trees_equal,
    build_tensor,
    tensor_bytes,
)

pytestmark = pytest.mark.filterwarnings(COMPLEX_HALF_WARNING)

SMALL = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(directory))
    return directory


@pytest.fixture
def store(cache_dir):
    name = f"castore-loading-{uuid.uuid4().hex}"
    yield castore.open(f"memory://{name}", chunking=SMALL)
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def every_dtype_state():
    weight = torch.randn(40, 30)
    flat = torch.arange(64, dtype=torch.int32)
    return {
        "dtypes": {
            str(dtype): build_tensor(dtype, (3, 700), seed=i, fill="random")
            for i, dtype in enumerate(SUPPORTED_DTYPES)
        },
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "wte": weight,
        "lm_head": weight,  # an alias: the same tensor twice
        "views": [flat[::2], flat[8:40].view(4, 8)],  # views of one storage
        "transposed": torch.randn(20, 50).t(),
    }


def mmap_files(cache_dir):
    folder = cache_dir / "mmap"
    return sorted(p for p in folder.iterdir() if p.suffix == ".bin") if folder.exists() else []


def downloads(store, before):
    return (store.transfer_stats() - before).blobs_downloaded


# ---- mmap -------------------------------------------------------------------------------


def test_mmap_round_trip_is_bit_exact_with_ties(store, cache_dir):
    state = every_dtype_state()
    store.run("r").save(state, epoch=0)
    loaded = store.run("r").load(mmap=True)
    assert_trees_equal(state, loaded)
    assert loaded["lm_head"] is loaded["wte"]
    views = loaded["views"]
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()
    assert torch.equal(views[1], state["views"][1])
    # Every data entry gets its own storage slice, so a re-save sees separate tensors.
    assert (
        loaded["wte"].untyped_storage().data_ptr() != loaded["scalar"].untyped_storage().data_ptr()
    )
    [path] = mmap_files(cache_dir)
    assert os.path.getsize(path) == plan_layout(store.run("r").record(0).tensors).size
    assert not os.access(path, os.W_OK) or os.geteuid() == 0


def test_mmap_layout_aligns_every_entry(store):
    store.run("r").save(every_dtype_state(), epoch=0)
    layout = plan_layout(store.run("r").record(0).tensors)
    assert all(offset % ALIGNMENT == 0 for offset in layout.offsets.values())


def test_mmap_tensors_are_copy_on_write(store, cache_dir):
    store.run("r").save({"w": torch.zeros(1000)}, epoch=0)
    loaded = store.run("r").load(mmap=True)
    loaded["w"].add_(1)
    [path] = mmap_files(cache_dir)
    assert path.read_bytes() == bytes(4000)
    again = store.run("r").load(mmap=True)
    assert torch.equal(again["w"], torch.zeros(1000))


def test_second_mmap_load_reuses_the_file(store, cache_dir):
    state = every_dtype_state()
    store.run("r").save(state, epoch=0)
    store.run("r").load(mmap=True)
    [path] = mmap_files(cache_dir)
    inode = path.stat().st_ino
    for verify in (True, False):
        before = store.transfer_stats()
        loaded = store.run("r").load(mmap=True, verify=verify)
        assert downloads(store, before) == 0  # every blob's pieces are in the file
        assert_trees_equal(state, loaded)
    assert mmap_files(cache_dir) == [path]
    assert path.stat().st_ino == inode


def test_a_truncated_file_is_rebuilt(store, cache_dir):
    state = {"w": torch.randn(3000)}
    store.run("r").save(state, epoch=0)
    store.run("r").load(mmap=True)
    [path] = mmap_files(cache_dir)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.truncate(100)
    loaded = store.run("r").load(mmap=True, verify=False)
    assert torch.equal(loaded["w"], state["w"])
    assert path.stat().st_size == 12000


def test_after_a_reboot_a_file_with_unwritten_ranges_is_rebuilt(store, cache_dir, monkeypatch):
    """What a power loss can leave behind: the right size, zeros where data was."""
    state = {"w": torch.randn(3000), "small": torch.randn(10)}
    store.run("r").save(state, epoch=0)
    store.run("r").load(mmap=True)
    [path] = mmap_files(cache_dir)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(5000)
        f.write(bytes(2000))
    monkeypatch.setattr(mmap_check, "boot_id", lambda: "next-boot")
    before = store.transfer_stats()
    loaded = store.run("r").load(mmap=True)
    assert downloads(store, before) > 0  # rebuilt from the blobs
    assert torch.equal(loaded["w"], state["w"])


def test_a_reused_file_is_rehashed_once_per_boot(store, cache_dir, monkeypatch):
    store.run("r").save({"w": torch.randn(3000)}, epoch=0)
    store.run("r").load(mmap=True, verify=False)  # built unverified: no marker
    checks = []
    real = mmap_check.check_file
    monkeypatch.setattr(mmap_file, "check_file", lambda *a: checks.append(1) or real(*a))
    store.run("r").load(mmap=True)
    store.run("r").load(mmap=True)
    assert len(checks) == 1
    markers = list((cache_dir / "mmap").glob("*.ok"))
    assert len(markers) == 1
    monkeypatch.setattr(mmap_check, "boot_id", lambda: "next-boot")
    store.run("r").load(mmap=True)
    assert len(checks) == 2


def test_a_failed_build_leaves_nothing_to_reuse(store, cache_dir, monkeypatch):
    state = {"w": torch.randn(3000)}
    store.run("r").save(state, epoch=0)
    calls = []
    real_get = store.blobs.get

    def failing_get(digest):
        calls.append(digest)
        if len(calls) == 2:
            raise castore.StorageError("connection reset")
        return real_get(digest)

    monkeypatch.setattr(store.blobs, "get", failing_get)
    with pytest.raises(castore.StorageError):
        store.run("r").load(mmap=True)
    assert list((cache_dir / "mmap").iterdir()) == []  # no final file, no temporary one
    monkeypatch.setattr(store.blobs, "get", real_get)
    assert torch.equal(store.run("r").load(mmap=True)["w"], state["w"])


def test_a_leftover_temporary_file_is_not_reused(store, cache_dir):
    state = {"w": torch.randn(3000)}
    store.run("r").save(state, epoch=0)
    layout = plan_layout(store.run("r").record(0).tensors)
    folder = cache_dir / "mmap"
    folder.mkdir(parents=True)
    (folder / f"{layout.name}.bin.tmp-crashed").write_bytes(bytes(layout.size))
    before = store.transfer_stats()
    assert torch.equal(store.run("r").load(mmap=True)["w"], state["w"])
    assert downloads(store, before) > 0


def test_mmap_goes_through_the_blob_cache_of_a_remote_store(store, tmp_path):
    state = {"w": torch.randn(3000)}
    store.run("r").save(state, epoch=0)
    cache = castore.CacheOptions(enabled=True, directory=str(tmp_path / "blobcache"))
    reader = castore.open(store.url, create=False, cache=cache)  # an evaluator elsewhere
    before = reader.transfer_stats()
    reader.run("r").load(mmap=True)
    first = reader.transfer_stats() - before
    assert first.blobs_downloaded == 3
    mapped = list((tmp_path / "blobcache" / "mmap").glob("*.bin"))  # beside the blob cache
    assert len(mapped) == 1
    mapped[0].unlink()
    before = reader.transfer_stats()
    assert torch.equal(reader.run("r").load(mmap=True)["w"], state["w"])
    second = reader.transfer_stats() - before
    assert second.blobs_downloaded == 0
    assert second.blobs_from_cache == 3


def test_old_mapped_files_are_evicted_beyond_the_cap(tmp_path, cache_dir):
    name = f"castore-loading-{uuid.uuid4().hex}"
    cache = castore.CacheOptions(enabled=True, directory=str(tmp_path / "c"), max_bytes=30_000)
    store = castore.open(f"memory://{name}", chunking=SMALL, cache=cache)
    try:
        run = store.run("r")
        for epoch in range(3):
            run.save({"w": torch.full((4000,), float(epoch))}, epoch=epoch)
            run.load(epoch, mmap=True)
        files = list((tmp_path / "c" / "mmap").glob("*.bin"))
        assert len(files) == 1  # 16 KB each: only the newest fits under 30 KB
        assert run.load(2, mmap=True)["w"][0].item() == 2.0
    finally:
        fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


# ---- partial loads ----------------------------------------------------------------------


def training_state():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()
    return model, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 7,
        "history": [torch.ones(3), torch.zeros(2), 0.5],
    }


def test_partial_load_returns_the_sub_tree(store):
    model, state = training_state()
    store.run("r").save(state, epoch=0)
    part = store.run("r").load(keys=["model.*"])
    assert list(part) == ["model"]
    assert isinstance(part["model"], OrderedDict)
    assert part["model"]._metadata == state["model"]._metadata
    fresh = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    fresh.load_state_dict(part["model"])
    assert torch.equal(fresh[2].weight, model[2].weight)


def test_patterns_select_prefixes_plain_values_and_keep_list_positions(store):
    _, state = training_state()
    store.run("r").save(state, epoch=0)
    run = store.run("r")
    assert_trees_equal(state["model"], run.load(keys="model")["model"])
    picked = run.load(keys=["epoch", "model.0.bias"])
    assert list(picked) == ["model", "epoch"]
    assert picked["epoch"] == 7
    assert list(picked["model"]) == ["0.bias"]
    history = run.load(keys=["history.1"])["history"]
    assert history[0] is None
    assert history[2] is None
    assert torch.equal(history[1], torch.zeros(2))
    assert set(run.load(keys="optimizer.state.*")["optimizer"]) == {"state"}


def test_partial_load_fetches_only_the_blobs_it_needs(store):
    state = {"policy": {"w": torch.randn(2048)}, "value": {"w": torch.randn(4096)}}
    store.run("r").save(state, epoch=0)
    record = store.run("r").record(0)
    policy = {c.digest for ref in record.tensors[:1] for c in ref.chunks}
    assert record.tensors[0].name == "policy.w"
    before = store.transfer_stats()
    part = store.run("r").load(keys=["policy.*"])
    stats = store.transfer_stats() - before
    assert stats.blobs_downloaded == len(policy) == 2
    assert torch.equal(part["policy"]["w"], state["policy"]["w"])


def test_a_selected_alias_or_view_brings_its_data(store):
    weight = torch.randn(10, 4)
    flat = torch.arange(100.0)
    store.run("r").save({"wte": weight, "head": weight, "a": flat[:50], "b": flat[40:]}, epoch=0)
    part = store.run("r").load(keys=["head", "b"])
    assert list(part) == ["head", "b"]
    assert torch.equal(part["head"], weight)
    assert torch.equal(part["b"], flat[40:])
    mapped = store.run("r").load(keys=["head", "b"], mmap=True)
    assert torch.equal(mapped["b"], flat[40:])


def test_an_unknown_key_is_a_not_found_and_a_key_error(store):
    store.run("r").save({"model": {"w": torch.ones(2)}}, epoch=0)
    for bad in (["model.nope"], ["nothing*"]):
        with pytest.raises(castore.NotFoundError, match="no tensor of the checkpoint matches"):
            store.run("r").load(keys=bad)
        with pytest.raises(KeyError):
            store.run("r").load(keys=bad)
    with pytest.raises(castore.InvalidCheckpointError, match="keys is empty"):
        store.run("r").load(keys=[])


# ---- lazy access ------------------------------------------------------------------------


def test_checkpoint_getitem_fetches_one_tensor_once(store):
    state = {"model": {"w": torch.randn(2048)}, "optimizer": {"m": torch.randn(4096)}}
    store.run("r").save(state, epoch=0)
    ckpt = store.run("r").open()
    assert len(ckpt) == 2
    assert list(ckpt) == ckpt.keys() == ["model.w", "optimizer.m"]
    assert "model.w" in ckpt
    assert "model" not in ckpt
    assert 3 not in ckpt
    before = store.transfer_stats()
    weight = ckpt["model.w"]
    assert downloads(store, before) == 2  # the two 4 KiB chunks of model.w, nothing else
    assert torch.equal(weight, state["model"]["w"])
    assert ckpt["model.w"] is weight
    assert downloads(store, before) == 2
    with pytest.raises(KeyError, match=r"model\.nope"):
        ckpt["model.nope"]
    with pytest.raises(castore.NotFoundError):
        ckpt["model.*"]  # names, not patterns


def test_checkpoint_load_passes_keys_mmap_and_map_location(store):
    state = {"model": {"w": torch.randn(100)}, "step": 3}
    store.run("r").save(state, epoch=4)
    ckpt = store.run("r").open(4)
    assert_trees_equal({"model": state["model"]}, ckpt.load(keys="model.*", mmap=True))
    assert ckpt.load(map_location="cpu")["step"] == 3


# ---- verify -----------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [False, True])
def test_verify_false_skips_hashing(store, cache_dir, monkeypatch, mmap):
    state = {"w": torch.randn(3000), "b": torch.randn(5)}
    store.run("r").save(state, epoch=0)
    hashed = record_digests(monkeypatch, frame_module, "check_digest")
    loaded = store.run("r").load(mmap=mmap, verify=False)
    assert hashed == []
    assert tensor_bytes(loaded["w"]) == tensor_bytes(state["w"])
    for path in mmap_files(cache_dir):
        path.unlink()
    store.run("r").load(mmap=mmap)
    record = store.run("r").record(0)
    assert len(hashed) == len({c.digest for ref in record.tensors for c in ref.chunks})


# ---- devices ----------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("mmap", [False, True])
def test_cuda_loads_keep_values_and_ties(store, mmap):
    state = every_dtype_state()
    store.run("r").save(state, epoch=0)
    loaded = store.run("r").load(map_location="cuda", mmap=mmap)
    assert loaded["wte"].device.type == "cuda"
    assert loaded["lm_head"] is loaded["wte"]
    assert loaded["views"][0].untyped_storage().data_ptr() == (
        loaded["views"][1].untyped_storage().data_ptr()
    )
    assert_trees_equal(state, {k: _to_cpu(v) for k, v in loaded.items()})


def _to_cpu(tree):
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_cpu(v) for v in tree]
    return tree
