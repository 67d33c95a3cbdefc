"""The local read-through cache: fewer downloads, LRU eviction, self-healing."""

from __future__ import annotations

import os
import uuid

import pytest
import torch

import castore
from castore.blobstore.cache import LocalBlobCache
from castore.blobstore.layout import blob_key
from castore.blobstore.store import BlobStore, CachedBlobStore
from castore.codec import hash_bytes

CHUNKS = castore.ChunkingOptions(chunk_bytes=16 * 1024, pack_below_bytes=4 * 1024)


def digest_of(i: int) -> str:
    return hash_bytes(str(i).encode())


def cache_files(directory) -> list[str]:
    return sorted(name for _, _, names in os.walk(directory) for name in names)


def test_get_put_discard(tmp_path):
    cache = LocalBlobCache(str(tmp_path), max_bytes=1 << 20)
    digest = digest_of(1)
    assert cache.get(digest) is None
    cache.put(digest, b"frame")
    assert cache.get(digest) == b"frame"
    assert (tmp_path / blob_key(digest)).read_bytes() == b"frame"
    assert cache.discard(digest) is True
    assert cache.discard(digest) is False
    assert cache.get(digest) is None


def test_least_recently_used_frames_are_evicted(tmp_path):
    cache = LocalBlobCache(str(tmp_path), max_bytes=1000)
    digests = [digest_of(i) for i in range(5)]
    for age, digest in enumerate(digests[:4]):
        cache.put(digest, bytes(200))
        os.utime(tmp_path / blob_key(digest), (1000 + age, 1000 + age))
    assert cache.get(digests[0]) is not None  # refreshed: now the most recent
    cache.put(digests[4], bytes(300))  # 1100 bytes > 1000: evict down to 900
    present = [d for d in digests if cache.get(d) is not None]
    assert present == [digests[0], digests[2], digests[3], digests[4]]


def test_frames_larger_than_the_cache_are_not_cached(tmp_path):
    cache = LocalBlobCache(str(tmp_path), max_bytes=10)
    cache.put(digest_of(1), bytes(11))
    assert cache_files(tmp_path) == []


def open_cached(url: str, directory) -> castore.Store:
    return castore.open(
        url, chunking=CHUNKS, cache=castore.CacheOptions(enabled=True, directory=str(directory))
    )


def test_cache_is_off_for_local_and_memory_by_default(tmp_path):
    assert type(castore.open(str(tmp_path / "s")).blobs) is BlobStore
    assert type(castore.open(f"memory://{uuid.uuid4().hex}").blobs) is BlobStore
    store = open_cached(f"memory://{uuid.uuid4().hex}", tmp_path / "cache")
    assert type(store.blobs) is CachedBlobStore


def test_next_epoch_downloads_only_changed_chunks(tmp_path):
    url = f"memory://{uuid.uuid4().hex}"
    writer = castore.open(url, chunking=CHUNKS)
    state = {f"t{i}": torch.randn(8 * 1024) for i in range(8)}  # 32 KiB each: 2 chunks
    writer.run("r").save(state, epoch=0)
    state["t3"] = state["t3"].clone()
    state["t3"][0] += 1
    writer.run("r").save(state, epoch=1)

    reader = open_cached(url, tmp_path / "cache")
    before = reader.transfer_stats()
    reader.run("r").load(0)
    first = reader.transfer_stats() - before
    assert (first.blobs_downloaded, first.blobs_from_cache) == (16, 0)

    loaded = reader.run("r").load(1)
    second = reader.transfer_stats() - before - first
    # the changed chunk is a delta frame: its keyframe (epoch 0's chunk) comes from the cache
    assert (second.blobs_downloaded, second.blobs_from_cache) == (1, 16)
    assert second.bytes_downloaded < first.bytes_downloaded / 10
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def cached_files(cache_dir, digest: str = "") -> list[str]:
    """The files of a local blob cache, those of ``digest`` only when given."""
    return [
        os.path.join(folder, name)
        for folder, _, names in os.walk(cache_dir)
        for name in names
        if digest in name
    ]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_frame_is_refetched(tmp_path, damage):
    url = f"memory://{uuid.uuid4().hex}"
    castore.open(url, chunking=CHUNKS).run("r").save({"w": torch.randn(100)}, epoch=0)
    reader = open_cached(url, tmp_path / "cache")
    expected = reader.run("r").load(0)["w"]
    (path,) = cached_files(tmp_path / "cache")
    with open(path, "rb") as f:
        frame = bytearray(f.read())
    good = bytes(frame)
    if damage == "flip":
        frame[-3] ^= 0xFF
    else:
        del frame[-10:]
    with open(path, "wb") as f:
        f.write(frame)

    again = open_cached(url, tmp_path / "cache")
    assert torch.equal(again.run("r").load(0)["w"], expected)
    stats = again.transfer_stats()
    assert stats.blobs_downloaded == 1
    with open(path, "rb") as f:
        assert f.read() == good


def test_a_corrupt_cached_delta_base_is_refetched(tmp_path):
    url = f"memory://{uuid.uuid4().hex}"
    writer = castore.open(url, chunking=CHUNKS).run("r")
    torch.manual_seed(3)
    w = torch.randn(4096)  # one 16 KiB chunk
    writer.save({"w": w}, epoch=0)
    writer.save({"w": w + 1e-4 * torch.randn(4096)}, epoch=1)
    (chunk,) = writer.record(1).tensors[0].chunks
    assert chunk.base == writer.record(0).tensors[0].chunks[0].digest
    reader = open_cached(url, tmp_path / "cache")
    expected = reader.run("r").load(1)["w"]
    (path,) = cached_files(tmp_path / "cache", chunk.base)
    with open(path, "rb") as f:
        good = f.read()
    with open(path, "wb") as f:
        f.write(good[:-1] + bytes([good[-1] ^ 0xFF]))

    again = open_cached(url, tmp_path / "cache")
    assert torch.equal(again.run("r").load(1)["w"], expected)
    assert again.transfer_stats().blobs_downloaded == 1  # the base, from the store
    with open(path, "rb") as f:
        assert f.read() == good
