"""BlobStore: frames by digest under blobs/, verified through the raw filesystem."""

from __future__ import annotations

import os

import pytest

from castore._config import TransferOptions
from castore.blobstore import BlobStore, open_location
from castore.blobstore.layout import blob_key
from castore.codec import hash_bytes
from castore.errors import BlobNotFoundError, NotFoundError


def digest_of(i: int) -> str:
    return hash_bytes(f"blob-{i}".encode())


@pytest.fixture
def blobs(backend):
    return BlobStore(
        open_location(backend.url, backend.storage_options), TransferOptions(workers=4)
    )


def test_put_get(backend, blobs):
    d = digest_of(0)
    blobs.put(d, [b"frame", memoryview(b"-0")])
    assert bytes(blobs.get(d)) == b"frame-0"
    raw_path = backend.raw_path(f"blobs/{d[:2]}/{d[2:4]}/{d}")
    assert backend.raw_fs.cat_file(raw_path) == b"frame-0"


def test_put_is_idempotent(blobs):
    d = digest_of(1)
    blobs.put(d, [memoryview(b"same")])
    blobs.put(d, [b"same"])
    assert bytes(blobs.get(d)) == b"same"
    assert blobs.sizes() == {d: 4}


def test_missing_blob_names_the_digest(backend, blobs):
    d = digest_of(2)
    with pytest.raises(BlobNotFoundError) as info:
        blobs.get(d)
    error = info.value
    assert isinstance(error, FileNotFoundError)
    assert isinstance(error, NotFoundError)
    assert error.digest == d
    assert error.url == backend.url
    assert str(error) == (
        f"blob {d[:12]} is missing from the store; run 'castore verify' to list the "
        f"affected checkpoints [store={backend.url} blob={d[:12]}…]"
    )


def test_has_many(blobs):
    present = [digest_of(i) for i in range(6)]
    absent = [digest_of(i) for i in range(6, 12)]
    for d in present:
        blobs.put(d, [d.encode()])
    assert blobs.has_many(present + absent + present) == set(present)
    assert blobs.has_many(absent) == set()
    assert blobs.has_many([]) == set()
    assert blobs.has_many(iter(present[:2])) == set(present[:2])


def test_sizes_lists_blobs_and_ignores_foreign_files(backend, blobs):
    frames = {digest_of(i): b"x" * i for i in range(5)}
    for d, frame in frames.items():
        blobs.put(d, [frame])
    location = blobs.location
    location.write("blobs/readme.txt", [b"not a blob"])
    location.write(f"{blob_key(digest_of(9))}.tmp-123", [b"partial"])
    d = digest_of(10)
    location.write(f"blobs/{d[2:4]}/{d[:2]}/{d}", [b"wrong fan-out"])
    location.write("runs/r/manifest/0000000000.parquet", [b"part"])
    assert blobs.sizes() == {digest: len(frame) for digest, frame in frames.items()}


def test_sizes_of_an_empty_store(blobs):
    assert blobs.sizes() == {}


def test_delete(backend, blobs):
    keep, drop = digest_of(0), digest_of(1)
    blobs.put(keep, [b"keep"])
    blobs.put(drop, [b"drop"])
    blobs.delete(drop)
    assert blobs.has_many([keep, drop]) == {keep}
    assert blobs.sizes() == {keep: 4}
    assert not backend.raw_fs.exists(backend.raw_path(blob_key(drop)))
    with pytest.raises(BlobNotFoundError):
        blobs.get(drop)


def test_put_refuses_a_malformed_digest(blobs):
    with pytest.raises(ValueError, match="not a digest"):
        blobs.put("ABC", [b"frame"])
    assert blobs.sizes() == {}


def test_local_puts_leave_no_temporary_files(tmp_path):
    blobs = BlobStore(open_location(str(tmp_path)))
    for i in range(20):
        blobs.put(digest_of(i % 7), [b"frame"])
    names = [name for _, _, files in os.walk(tmp_path) for name in files]
    assert sorted(names) == sorted({digest_of(i) for i in range(7)})


def test_transfer_counts(blobs):
    before = blobs.stats()
    blobs.put(digest_of(0), [b"12345"])
    blobs.put(digest_of(1), [memoryview(b"12")])
    blobs.get(digest_of(0))
    with pytest.raises(BlobNotFoundError):
        blobs.get(digest_of(2))
    done = blobs.stats() - before
    assert (done.blobs_uploaded, done.bytes_uploaded) == (2, 7)
    assert (done.blobs_downloaded, done.bytes_downloaded) == (1, 5)
    assert (done.blobs_from_cache, done.bytes_from_cache) == (0, 0)
