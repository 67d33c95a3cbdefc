"""Retries: transient failures are retried with backoff, permanent ones fail at once."""

from __future__ import annotations

import errno

import fsspec
import pytest
import torch

import castore
from castore.blobstore.errors import is_transient
from castore.blobstore.location import Location
from castore.blobstore.retry import RetryPolicy, with_retries
from castore.errors import ConflictError, NotFoundError, StorageError
from tests.faults import FlakyFileSystem

FAST = RetryPolicy(attempts=8, base_delay_s=0.0, max_delay_s=0.0)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.EIO, "SlowDown"), True),
        (OSError(errno.EREMOTEIO, "InternalError"), True),
        (FileNotFoundError("gone"), False),
        (PermissionError("AccessDenied"), False),
        (FileExistsError("taken"), False),
        (OSError(errno.ENOSPC, "full"), False),
        (ValueError("bad"), False),
        (NotFoundError("castore's own"), False),
        (None, False),
    ],
)
def test_classification(exc, transient):
    assert is_transient(exc) is transient


def test_backoff_delays_are_bounded_and_jittered():
    policy = RetryPolicy(attempts=5, base_delay_s=0.1, max_delay_s=0.3)
    delays = [policy.delay_s(retry) for retry in range(6) for _ in range(50)]
    assert all(0.0 <= d <= 0.3 for d in delays)
    assert len(set(delays)) > 100
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_transient_errors_are_retried_until_success():
    attempts = []

    def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 3:
            raise StorageError("reset") from ConnectionResetError()
        return "ok"

    assert with_retries(FAST, flaky) == "ok"
    assert attempts == [0, 1, 2, 3]


def test_permanent_errors_fail_at_once():
    attempts = []

    def denied(attempt: int) -> None:
        attempts.append(attempt)
        raise StorageError("denied") from PermissionError()

    with pytest.raises(StorageError, match="denied"):
        with_retries(FAST, denied)
    assert attempts == [0]


def test_giving_up_says_how_often_it_tried():
    def always(attempt: int) -> None:
        raise StorageError("reset") from ConnectionResetError()

    with pytest.raises(StorageError) as caught:
        with_retries(RetryPolicy(attempts=3, base_delay_s=0.0), always)
    assert caught.value.__notes__ == ["gave up after 3 attempts"]


def flaky_location(rate: float, seed: int = 1) -> tuple[Location, FlakyFileSystem]:
    inner = fsspec.filesystem("memory")
    fs = FlakyFileSystem(inner, rate=rate, seed=seed)
    root = f"/flaky-{seed}-{rate}"
    if inner.exists(root):
        inner.rm(root, recursive=True)
    return Location(fs=fs, root=root, url=f"flaky://{root}", retry=FAST), fs


def test_exclusive_create_whose_reply_was_lost_counts_as_ours(monkeypatch):
    location, fs = flaky_location(rate=0.0)
    original = fs.inner.pipe_file
    calls = []

    def reply_lost_once(*args, **kwargs):
        calls.append(args[0])
        original(*args, **kwargs)
        if len(calls) == 1:
            raise ConnectionResetError("reply lost")

    monkeypatch.setattr(fs.inner, "pipe_file", reply_lost_once)
    key = "runs/r/manifest/0000000000.parquet"
    location.write_exclusive(key, b"mine")
    assert len(calls) == 2
    with pytest.raises(ConflictError):
        location.write_exclusive(key, b"theirs")
    assert location.read(key) == b"mine"


def test_save_and_load_survive_ten_percent_transient_failures(monkeypatch):
    inner = fsspec.filesystem("memory")
    flaky = FlakyFileSystem(inner, rate=0.1, seed=7)
    original = fsspec.core.url_to_fs

    def url_to_fs(url, **options):
        if url.startswith("flaky://"):
            return flaky, "/flaky-save-load"
        return original(url, **options)

    monkeypatch.setattr(fsspec.core, "url_to_fs", url_to_fs)
    state = {f"layer{i}": torch.randn(3000) for i in range(30)}
    store = castore.open(
        "flaky://store",
        retry=FAST,
        chunking=castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024),
    )
    for epoch in range(3):
        state[f"layer{epoch}"] = state[f"layer{epoch}"] + 1
        store.run("r").save(state, epoch=epoch, metrics={"score": float(epoch)})
    loaded = castore.open("flaky://store", retry=FAST).run("r").load(best="score")
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor)
    assert flaky.failures > 10
    assert flaky.calls > 200
