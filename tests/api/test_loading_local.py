"""Loads from a local directory store, where raw frames are read straight into tensors.

Every corruption a blob file can suffer (a flipped payload byte, a cut, bytes appended,
a file replaced by another blob's) must still fail the load with an IntegrityError that
names the tensor and the blob, eager and mmap, and never hand back the bytes read.
"""

from __future__ import annotations

import os

import pytest
import torch

import castore
import castore.codec.frame as frame_module
from castore._config import CACHE_DIR_ENV
from tests.spies import record_digests
from tests.strategies import assert_trees_equal, tensor_bytes

SMALL = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
RAW = castore.CodecOptions(codec="raw")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv(CACHE_DIR_ENV, str(directory))
    return directory


@pytest.fixture(params=["raw", "auto"])
def store(request, tmp_path, cache_dir):
    codec = castore.CodecOptions(codec=request.param)
    return castore.open(str(tmp_path / "store"), chunking=SMALL, codec=codec, progress=False)


def is_raw(store):
    return store.options.codec.codec == "raw"


def state():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 48, generator=generator)  # 12 KiB: three 4 KiB chunks
    shared = torch.arange(300, dtype=torch.int16)
    return {
        "w": weight,
        "tied": weight,
        "b": torch.randn(48, generator=generator),  # packed
        "ints": torch.arange(2000, dtype=torch.int64),
        "views": [shared[:100], shared[50:].view(10, 25)],
        "scalar": torch.tensor(1.5),
    }


def blob_path(store, digest):
    return os.path.join(store.url, "blobs", digest[:2], digest[2:4], digest)


def chunk_of(store, name, index=0):
    ref = next(r for r in store.run("r").record(0).tensors if r.name == name)
    return ref.chunks[index]


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("verify", [True, False])
def test_local_loads_are_bit_exact_with_ties(store, mmap, verify):
    saved = state()
    store.run("r").save(saved, epoch=0)
    loaded = store.run("r").load(mmap=mmap, verify=verify)
    assert_trees_equal(saved, loaded)
    assert loaded["tied"] is loaded["w"]
    views = loaded["views"]
    assert views[0].untyped_storage().data_ptr() == views[1].untyped_storage().data_ptr()


def test_partial_local_load_reads_only_its_blobs(store):
    saved = state()
    store.run("r").save(saved, epoch=0)
    before = store.transfer_stats()
    loaded = store.run("r").load(keys=["ints"])
    assert tensor_bytes(loaded["ints"]) == tensor_bytes(saved["ints"])
    read = store.transfer_stats() - before
    assert read.blobs_downloaded == 4  # 16000 bytes in 4 KiB chunks, nothing else


def _corrupt(path, how):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if how == "flip":
        data[-100] ^= 0x01
    elif how == "cut":
        data = data[:-1]
    elif how == "append":
        data += b"\0"
    elif how == "header":
        data = data[:10]
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(data)


# What a raw frame's damage reads as; a compressed frame's may fail inside zstd instead.
MESSAGES = {
    "flip": r"decoded to .*the stored frame is corrupt",
    "cut": r"raw frame holds 4095 bytes, header says 4096",
    "append": r"raw frame holds 4097 bytes, header says 4096",
    "header": r"frame truncated: 10 bytes is shorter than a header",
}


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("how", list(MESSAGES))
def test_a_corrupt_blob_file_fails_the_load_naming_tensor_and_blob(store, cache_dir, mmap, how):
    store.run("r").save(state(), epoch=0)
    chunk = chunk_of(store, "w", 1)
    _corrupt(blob_path(store, chunk.digest), how)
    verify_options = [True] if how == "flip" else [True, False]  # structure is always checked
    message = MESSAGES[how] if is_raw(store) or how == "header" else None
    for verify in verify_options:
        with pytest.raises(castore.IntegrityError, match=message) as info:
            store.run("r").load(mmap=mmap, verify=verify)
        assert (info.value.tensor, info.value.digest) == ("w", chunk.digest)
        assert (info.value.run, info.value.epoch) == ("r", 0)
    mapped = cache_dir / "mmap"
    assert not mapped.exists() or not [p for p in mapped.iterdir() if p.suffix == ".bin"]


def test_a_blob_file_holding_another_blob_fails_verification(store):
    store.run("r").save(state(), epoch=0)
    first, second = chunk_of(store, "w", 0), chunk_of(store, "w", 1)
    target = blob_path(store, second.digest)
    os.chmod(target, 0o644)
    with open(blob_path(store, first.digest), "rb") as source, open(target, "wb") as f:
        f.write(source.read())
    with pytest.raises(castore.IntegrityError, match="the stored frame is corrupt") as info:
        store.run("r").load()
    assert (info.value.tensor, info.value.digest) == ("w", second.digest)
    loaded = store.run("r").load(verify=False)  # the structure is sound: only hashing tells
    raw = tensor_bytes(loaded["w"])
    assert raw[4096:8192] == raw[:4096]


def test_a_missing_blob_file_names_tensor_and_blob(store):
    store.run("r").save(state(), epoch=0)
    chunk = chunk_of(store, "ints", 2)
    os.remove(blob_path(store, chunk.digest))
    with pytest.raises(castore.BlobNotFoundError) as info:
        store.run("r").load()
    assert (info.value.tensor, info.value.digest) == ("ints", chunk.digest)


def test_each_blob_is_hashed_once_where_it_was_read(store, monkeypatch):
    store.run("r").save(state(), epoch=0)
    hashed = record_digests(monkeypatch, frame_module, "check_digest")
    store.run("r").load()
    record = store.run("r").record(0)
    digests = {c.digest for ref in record.tensors for c in ref.chunks}
    assert sorted(hashed) == sorted(digests)
