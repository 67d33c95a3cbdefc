"""While a run is followed, each epoch's chunks decode against the blobs the last load
decoded, one frame each, instead of walking their delta chains back to a full frame."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch

import castore
from castore.blobstore.store import BlobStore
from tests.spies import record_digests

SMALL = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)
EPOCHS = 6


def drifting_states() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(50_000, generator=generator)
    states = []
    for _ in range(EPOCHS):
        states.append({"w": weight.clone(), "bias": torch.full((64,), float(len(states)))})
        weight = weight + 1e-3 * torch.randn(50_000, generator=generator)
    return states


@pytest.fixture
def run():
    store = castore.open(f"memory://{uuid.uuid4().hex}", chunking=SMALL)
    run = store.run("r")
    for epoch, state in enumerate(drifting_states()):
        run.save(state, epoch=epoch)
    assert any(c.ancestors for ref in run.record(3).tensors for c in ref.chunks)  # chains
    return run


def digests(run, epoch: int) -> set[str]:
    return {c.digest for ref in run.record(epoch).tensors for c in ref.chunks}


def test_following_reads_one_frame_per_new_chunk(run, monkeypatch):
    reads = record_digests(monkeypatch, BlobStore, "reader")
    expected = drifting_states()
    seen: set[str] = set()
    for checkpoint in run.follow(timeout_s=0):
        before = len(reads)
        loaded = checkpoint.load()
        assert set(loaded) == {"w", "bias"}
        assert all(torch.equal(loaded[k], expected[checkpoint.epoch][k]) for k in loaded)
        new = digests(run, checkpoint.epoch) - seen
        assert sorted(reads[before:]) == sorted(new)
        seen |= new
    assert run.store.blobs.decoded is None


def test_without_following_a_load_walks_the_chains(run, monkeypatch):
    for epoch in range(EPOCHS - 1):
        run.load(epoch)
    reads = record_digests(monkeypatch, BlobStore, "reader")
    run.load(4)
    chunks = [c for ref in run.record(4).tensors for c in ref.chunks]
    chains = [(c.digest, c.base, *c.ancestors) for c in chunks]
    assert all(len(chain) == 5 for chain in chains)
    assert sorted(reads) == sorted(d for chain in chains for d in chain)


def test_a_wrong_kept_base_costs_a_decode_from_the_store(run):
    following = run.follow(timeout_s=0)
    first = next(following)
    first.load()
    decoded = run.store.blobs.decoded
    assert decoded is not None
    assert decoded.used > 0
    for digest in digests(run, 0):
        kept = decoded.get(digest)
        assert kept is not None
        decoded._kept[digest] = np.zeros_like(kept)  # as if memory went bad
    second = next(following)
    assert torch.equal(second.load()["w"], drifting_states()[1]["w"])
    following.close()
    assert run.store.blobs.decoded is None


def test_the_budget_bounds_what_is_kept(monkeypatch):
    store = castore.open(
        f"memory://{uuid.uuid4().hex}",
        chunking=SMALL,
        codec=castore.CodecOptions(base_cache_bytes=100 * 1024),
    )
    run = store.run("r")
    for epoch, state in enumerate(drifting_states()[:2]):
        run.save(state, epoch=epoch)
    for checkpoint in run.follow(timeout_s=0):
        checkpoint.load()
        assert 0 < store.blobs.decoded.used <= 100 * 1024
