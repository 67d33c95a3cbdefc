"""BlobStore.reader: a blob opened for a load, read by range into caller memory or whole.

Local files are read in place (``FileReader``); every other backend hands over the frame
it downloaded (``BufferReader``). Either way a read never returns fewer bytes than asked
without raising, and a missing blob is a BlobNotFoundError naming it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from castore._config import CacheOptions, TransferOptions
from castore.blobstore import BlobStore, open_location
from castore.blobstore.cache import LocalBlobCache
from castore.blobstore.reader import BufferReader, FileReader
from castore.blobstore.store import CachedBlobStore
from castore.codec import hash_bytes
from castore.errors import BlobNotFoundError, IntegrityError

FRAME = bytes(range(256)) * 40  # 10 KiB, every byte value, no two ranges alike


@pytest.fixture
def blobs(backend):
    return BlobStore(
        open_location(backend.url, backend.storage_options), TransferOptions(workers=2)
    )


def test_ranges_and_the_whole_frame(backend, blobs):
    d = hash_bytes(FRAME)
    blobs.put(d, [FRAME])
    before = blobs.stats()
    with blobs.reader(d) as reader:
        assert isinstance(reader, FileReader if backend.name == "local" else BufferReader)
        assert reader.size == len(FRAME)
        for offset, length in [(0, 16), (16, 4000), (4095, 6145), (len(FRAME) - 1, 1), (7, 0)]:
            out = np.full(length, 0xEE, dtype=np.uint8)
            reader.read_into(offset, memoryview(out))
            assert out.tobytes() == FRAME[offset : offset + length]
        assert bytes(reader.frame()) == FRAME
    done = blobs.stats() - before
    assert (done.blobs_downloaded, done.bytes_downloaded) == (1, len(FRAME))


def test_reading_past_the_end_raises(blobs):
    d = hash_bytes(FRAME)
    blobs.put(d, [FRAME])
    with blobs.reader(d) as reader:
        out = np.zeros(32, dtype=np.uint8)
        with pytest.raises(IntegrityError, match=r"ends at byte"):
            reader.read_into(len(FRAME) - 16, memoryview(out))


def test_a_missing_blob_names_the_digest(backend, blobs):
    d = hash_bytes(b"never stored")
    with pytest.raises(BlobNotFoundError) as info:
        blobs.reader(d)
    assert info.value.digest == d
    assert info.value.url == backend.url


def test_a_file_cut_short_while_open_raises_instead_of_leaving_bytes_unread(tmp_path):
    blobs = BlobStore(open_location(str(tmp_path)))
    d = hash_bytes(FRAME)
    blobs.put(d, [FRAME])
    path = tmp_path / "blobs" / d[:2] / d[2:4] / d
    with blobs.reader(d) as reader:
        os.truncate(path, 5000)
        out = np.zeros(len(FRAME) - 100, dtype=np.uint8)
        with pytest.raises(IntegrityError, match=r"blob file ends at byte 5000, before 10240"):
            reader.read_into(100, memoryview(out))


def test_a_cached_store_reads_through_its_cache(tmp_path):
    cache = LocalBlobCache(str(tmp_path / "cache"), CacheOptions().max_bytes)
    blobs = CachedBlobStore(open_location(str(tmp_path / "store")), cache)
    d = hash_bytes(FRAME)
    blobs.put(d, [FRAME])
    before = blobs.stats()
    with blobs.reader(d) as reader:
        assert bytes(reader.frame()) == FRAME
    done = blobs.stats() - before
    assert (done.blobs_from_cache, done.blobs_downloaded) == (1, 0)
