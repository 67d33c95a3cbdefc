"""Local loads hash each blob file once per boot, and again whenever the file changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import castore
from castore.blobstore import verified
from castore.blobstore.layout import blob_key
from castore.codec import frame
from castore.errors import IntegrityError
from tests.spies import record_digests

SMALL = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)


def state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(40_000, generator=generator),
        "b": torch.randn(30_000, generator=generator),
        "bias": torch.randn(100, generator=generator),
    }


@pytest.fixture
def run(tmp_path):
    store = castore.open(str(tmp_path / "store"), chunking=SMALL, codec=castore.CodecOptions("raw"))
    run = store.run("r")
    run.save(state(), epoch=0)
    time.sleep(verified.RACY_NS / 1e9 * 1.5)  # older than a timestamp tick
    return run


def blob_paths(run) -> list[str]:
    digests = {c.digest for ref in run.record(0).tensors for c in ref.chunks}
    return [run.store.location.path(blob_key(d)) for d in digests]


def test_the_second_load_hashes_nothing_and_returns_the_same_bytes(run, monkeypatch):
    hashed = record_digests(monkeypatch, frame, "check_digest")
    first = run.load(0)
    blobs = len(blob_paths(run))
    assert len(hashed) == blobs == 6  # 64 KiB chunks: three of "a", two of "b"; one pack
    again = run.load(0)
    assert len(hashed) == blobs
    for name, tensor in state().items():
        assert torch.equal(first[name], tensor)
        assert torch.equal(again[name], tensor)


def test_a_new_process_trusts_what_an_earlier_one_hashed(run, monkeypatch):
    run.load(0)
    reopened = castore.open(run.store.url).run("r")
    hashed = record_digests(monkeypatch, frame, "check_digest")
    assert torch.equal(reopened.load(0)["a"], state()["a"])
    assert hashed == []


def damage_in_place(run) -> str:
    """Flip the last byte of the largest blob file, writing into the file; its path."""
    path = max(blob_paths(run), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    return path


def later(monkeypatch) -> None:
    """Make files changed just now look old enough to have an identity."""
    monkeypatch.setattr(time, "time_ns", lambda: int(time.time() * 1e9) + 10 * verified.RACY_NS)


def test_a_blob_written_in_place_after_its_hash_is_hashed_again(run, monkeypatch):
    run.load(0)
    path = damage_in_place(run)
    later(monkeypatch)
    with pytest.raises(IntegrityError) as raised:
        run.load(0)
    assert raised.value.digest is not None
    assert path.endswith(raised.value.digest)


def test_a_blob_replaced_after_its_hash_is_hashed_again(run, monkeypatch):
    run.load(0)
    path = max(blob_paths(run), key=os.path.getsize)
    frame_bytes = bytearray(Path(path).read_bytes())
    frame_bytes[-1] ^= 0xFF
    with open(path + ".new", "wb") as f:
        f.write(frame_bytes)
    os.replace(path + ".new", path)
    later(monkeypatch)
    with pytest.raises(IntegrityError):
        run.load(0)


def test_remember_verified_off_hashes_every_load(tmp_path, monkeypatch):
    url = str(tmp_path / "store")
    cache = castore.CacheOptions(directory=str(tmp_path / "cache"), remember_verified=False)
    run = castore.open(url, chunking=SMALL, cache=cache).run("r")
    run.save(state(), epoch=0)
    time.sleep(verified.RACY_NS / 1e9 * 1.5)
    hashed = record_digests(monkeypatch, frame, "check_digest")
    run.load(0)
    run.load(0)
    assert len(hashed) == 2 * len(blob_paths(run))
    assert not os.path.exists(tmp_path / "cache" / "verified")


def test_delta_frames_are_hashed_on_every_load(tmp_path, monkeypatch):
    store = castore.open(str(tmp_path / "store"), chunking=SMALL)
    run = store.run("r")
    weights = state()
    run.save(weights, epoch=0)
    run.save({name: tensor + 1e-3 for name, tensor in weights.items()}, epoch=1)
    time.sleep(verified.RACY_NS / 1e9 * 1.5)
    chained = [c.digest for ref in run.record(1).tensors for c in ref.chunks if c.base]
    assert chained
    run.load(1)
    hashed = record_digests(monkeypatch, frame, "check_digest")
    run.load(1)
    assert sorted(hashed) == sorted(set(chained))


def test_store_verify_hashes_what_loads_trust(run, monkeypatch):
    """A record that vouches for a damaged file (as one written before the damage could,
    were timestamps not to move) fools loads, never ``store.verify``."""
    path = damage_in_place(run)
    later(monkeypatch)
    identity = verified.identity_of(os.stat(path))
    assert identity is not None
    digest = os.path.basename(path)
    run.store.blobs.verified.record(digest, identity)
    run.load(0)  # trusted as recorded: the documented cost of remembering
    report = run.store.verify()
    assert [problem.digest for problem in report.problems] == [digest]
