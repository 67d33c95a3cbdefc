"""Decoded blobs kept while a run is followed: copies, read-only, within a budget."""

from __future__ import annotations

import numpy as np

from castore.blobstore.decoded import DecodedBlobs


def blob(fill: int, size: int = 100) -> np.ndarray:
    return np.full(size, fill, dtype=np.uint8)


def test_a_kept_blob_is_a_read_only_copy():
    kept = DecodedBlobs(1000)
    source = blob(1)
    kept.keep("a", source)
    source[:] = 9
    found = kept.get("a")
    assert found is not None
    assert bytes(found) == bytes(blob(1))
    assert not found.flags.writeable


def test_the_least_recently_used_go_first():
    kept = DecodedBlobs(300)
    for name, fill in zip("abc", (1, 2, 3), strict=True):
        kept.keep(name, blob(fill))
    assert kept.get("a") is not None  # "b" is now the least recently used
    kept.keep("d", blob(4))
    assert [kept.get(name) is not None for name in "abcd"] == [True, False, True, True]
    assert kept.used == 300


def test_a_blob_larger_than_the_budget_is_not_kept():
    kept = DecodedBlobs(99)
    kept.keep("a", blob(1))
    assert kept.get("a") is None
    assert kept.used == 0


def test_blobs_used_as_bases_go_first():
    kept = DecodedBlobs(300)
    for name, fill in zip("abc", (1, 2, 3), strict=True):
        kept.keep(name, blob(fill))
    assert kept.get("c", as_base=True) is not None  # the next epoch's delta consumed "c"
    kept.keep("d", blob(4))
    assert [kept.get(name) is not None for name in "abcd"] == [True, True, False, True]
