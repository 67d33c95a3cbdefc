"""Transient faults on every backend: with 10% of calls failing, saves and loads succeed."""

from __future__ import annotations

import fsspec
import pytest
import torch

import castore
from tests.faults import FlakyFileSystem

FAST = castore.RetryPolicy(attempts=10, base_delay_s=0.001, max_delay_s=0.01)


@pytest.fixture
def flaky_url(backend, monkeypatch):
    """``flaky://store``: the backend's store behind a FlakyFileSystem failing 10% of calls."""
    inner, root = fsspec.core.url_to_fs(backend.url, **backend.storage_options)
    flaky = FlakyFileSystem(inner, rate=0.1, seed=11)
    original = fsspec.core.url_to_fs

    def url_to_fs(url, **options):
        return (flaky, root) if url == "flaky://store" else original(url, **options)

    monkeypatch.setattr(fsspec.core, "url_to_fs", url_to_fs)
    return flaky


def test_save_and_load_with_ten_percent_transient_failures(backend, flaky_url):
    chunking = castore.ChunkingOptions(chunk_bytes=8192, pack_below_bytes=2048)
    cache = castore.CacheOptions(enabled=False)
    state = {f"layer{i}": torch.randn(3000) for i in range(12)}
    saved = []
    for epoch in range(3):
        state[f"layer{epoch}"] = state[f"layer{epoch}"] + 1
        store = castore.open("flaky://store", retry=FAST, chunking=chunking, cache=cache)
        store.run("r").save(state, epoch=epoch, metrics={"score": float(epoch)})
        saved.append({k: v.clone() for k, v in state.items()})

    reader = castore.open("flaky://store", retry=FAST, cache=cache).run("r")
    assert reader.epochs() == [0, 1, 2]
    for epoch, expected in enumerate(saved):
        loaded = reader.load(epoch)
        assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert flaky_url.failures >= 10
