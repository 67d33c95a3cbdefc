"""Properties: mmap loads equal eager loads, ties included; partial loads return exactly
the selected tensors, in tree order, with the bytes a full load gives them."""

from __future__ import annotations

import glob
import uuid

import fsspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import castore
from castore._config import CACHE_DIR_ENV
from tests.strategies import (
    COMPLEX_HALF_WARNING,
    LARGE_REPR_WARNING,
    assert_trees_equal,
    checkpoint_trees,
    iter_tensors,
    storage_groups,
    tensor_bytes,
)

pytestmark = [
    pytest.mark.filterwarnings(COMPLEX_HALF_WARNING),
    pytest.mark.filterwarnings(LARGE_REPR_WARNING),
]

CHUNKING = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)


@pytest.fixture(scope="module")
def mmap_cache(tmp_path_factory):
    """One cache directory for the module: examples of equal content share mapped files."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("mmap-cache")))
        yield


def saved_run(tree):
    name = f"castore-loadprop-{uuid.uuid4().hex}"
    store = castore.open(f"memory://{name}", chunking=CHUNKING)
    store.run("p").save(tree, epoch=0)
    return name, store.run("p")


def forget(name):
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


@given(tree=checkpoint_trees())
def test_mmap_load_equals_the_tree_and_keeps_ties(mmap_cache, tree):
    name, run = saved_run(tree)
    try:
        mapped = run.load(mmap=True)
        again = run.load(mmap=True)  # the reused file
    finally:
        forget(name)
    assert_trees_equal(tree, mapped)
    assert_trees_equal(tree, again)
    leaves = iter_tensors(mapped)
    groups = storage_groups(iter_tensors(tree))
    for i, tensor in enumerate(leaves):
        for j in range(i):
            if tensor.numel() and leaves[j].numel():
                shared = (
                    tensor.untyped_storage().data_ptr() == leaves[j].untyped_storage().data_ptr()
                )
                assert shared == (groups[i] == groups[j]), (i, j)


@given(tree=checkpoint_trees(), data=st.data(), mmap=st.booleans())
def test_partial_load_returns_the_selected_tensors(mmap_cache, tree, data, mmap):
    name, run = saved_run(tree)
    try:
        ckpt = run.open(0)
        names = ckpt.keys()
        chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
        part = run.load(keys=[glob.escape(n) for n in chosen], mmap=mmap)
        expected = [n for n in names if any(n == c or n.startswith(c + ".") for c in chosen)]
        wanted = [tensor_bytes(ckpt[n]) for n in expected]
    finally:
        forget(name)
    assert [tensor_bytes(t) for t in iter_tensors(part)] == wanted
