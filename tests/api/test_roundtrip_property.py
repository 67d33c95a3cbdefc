"""Property: any checkpoint tree saves and loads back identical, ties included.

Small chunks (4 KiB, packs below 1 KiB) put multi-chunk tensors, packs and mixed-width
packs in nearly every example; memory:// keeps each example fast and isolated.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING

import fsspec
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import castore
from castore.snapshot.dtypes import element_size
from tests.strategies import (
    COMPLEX_HALF_WARNING,
    LARGE_REPR_WARNING,
    assert_trees_equal,
    build_tensor,
    checkpoint_trees,
    iter_tensors,
    storage_groups,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [
    pytest.mark.filterwarnings(COMPLEX_HALF_WARNING),
    pytest.mark.filterwarnings(LARGE_REPR_WARNING),
]

CHUNKING = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)


@contextmanager
def memory_store(
    chunking: castore.ChunkingOptions = CHUNKING, **options: object
) -> Iterator[castore.Store]:
    name = f"castore-prop-{uuid.uuid4().hex}"
    try:
        yield castore.open(f"memory://{name}", chunking=chunking, **options)
    finally:
        fs = fsspec.filesystem("memory")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)


def ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def assert_ties_preserved(original: list[torch.Tensor], loaded: list[torch.Tensor]) -> None:
    """Leaves that shared storage share it again; leaves that did not, do not."""
    assert len(loaded) == len(original)
    groups = storage_groups(original)
    for i, group in enumerate(groups):
        if loaded[i].numel() == 0:
            continue
        for j in range(i):
            if loaded[j].numel() == 0:
                continue
            tied = groups[j] == group
            assert (ptr(loaded[i]) == ptr(loaded[j])) == tied, (i, j, tied)


@given(tree=checkpoint_trees())
def test_save_then_load_is_identical(tree):
    with memory_store() as store:
        run = store.run("prop")
        info = run.save(tree, epoch=0)
        back = run.load()
        record = run.record(0)
    assert_trees_equal(tree, back)
    original, loaded = iter_tensors(tree), iter_tensors(back)
    assert_ties_preserved(original, loaded)
    # Each tensor entry's chunks add up to its bytes; blobs stay within chunk_bytes.
    for ref in record.tensors:
        assert ref.stored_length == (ref.numel * _itemsize(ref.dtype) if ref.has_data else 0)
        for chunk in ref.chunks:
            assert chunk.blob_length <= CHUNKING.chunk_bytes
    assert info.logical_bytes == record.logical_bytes
    for role in sorted({str(ref.role) for ref in record.tensors}):
        event(f"role {role}")
    blobs = [c for ref in record.tensors for c in ref.chunks]
    if any(c.offset > 0 for c in blobs):
        event("packed blob")
    if any(len(ref.chunks) > 1 for ref in record.tensors):
        event("multi-chunk entry")
    assert info.blobs_written + info.blobs_skipped == len({c.digest for c in _chunks(record)})


@given(tree=checkpoint_trees())
def test_an_unchanged_second_save_writes_nothing(tree):
    with memory_store() as store:
        run = store.run("prop")
        run.save(tree, epoch=0)
        blobs_before = store.blobs.sizes()
        info = run.save(tree, epoch=1)
        assert info.blobs_written == 0
        assert info.new_bytes == 0
        assert store.blobs.sizes() == blobs_before
        back = run.load(1)
    assert_trees_equal(tree, back)
    assert_ties_preserved(iter_tensors(tree), iter_tensors(back))


@given(tree=checkpoint_trees(), seed=st.integers(0, 2**32 - 1))
def test_in_place_changes_between_saves_are_saved(tree, seed):
    with memory_store() as store:
        run = store.run("prop")
        run.save(tree, epoch=0)
        writable = [
            t
            for t in iter_tensors(tree)
            if t.numel() and 0 not in t.stride() and not (t.is_conj() or t.is_neg())
        ]
        if writable:
            target = writable[seed % len(writable)]
            target.copy_(build_tensor(target.dtype, tuple(target.shape), seed, "random"))
            event("changed a tensor in place")
        run.save(tree, epoch=1)
        back = run.load(1)
        before = run.load(0)
    assert_trees_equal(tree, back)  # views of the changed tensor changed with it
    assert_ties_preserved(iter_tensors(tree), iter_tensors(back))
    assert len(iter_tensors(before)) == len(iter_tensors(tree))


def _chunks(record):
    return [chunk for ref in record.tensors for chunk in ref.chunks]


def _itemsize(code: str) -> int:
    return element_size(code)


def test_a_write_through_data_between_saves_is_saved_without_reuse():
    """Writes through ``.data`` escape the version counter; partial ones can escape the
    sampled windows too, so code that makes them saves with ``reuse_unchanged=False``."""
    with memory_store(castore.ChunkingOptions(), reuse_unchanged=False) as store:
        run = store.run("data")
        embedding = torch.nn.Embedding(100_000, 16)  # two chunks of 4 MiB at the default
        run.save(embedding.state_dict(), epoch=0)
        embedding.weight.data[5000] = 42.0  # no version bump, far from any sampled window
        run.save(embedding.state_dict(), epoch=1)
        back = run.load(1)
    assert torch.equal(back["weight"], embedding.weight.detach())
