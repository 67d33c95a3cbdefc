"""castore against torch.save + s3fs on S3, served by moto on loopback in this process.

Two epochs of a training run: epoch 0 is the full state, epoch 1 changes every tenth
tensor in place, as an optimizer step on part of a model would. castore saves both into
one run and loads them through one blob cache, so epoch 1 uploads and downloads only the
changed chunks; the peer uploads a whole ``torch.save`` file per epoch and downloads it
whole to load it. Each attempt writes under its own key prefix and deletes it afterwards
(untimed), so nothing is deduplicated against an earlier attempt.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import fsspec
import torch

import castore
from cases.common import Result, best_of, check_equal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from fsspec import AbstractFileSystem

    from cases.common import BenchState

__all__ = ["CASES", "S3Result", "S3Server", "bench_s3", "describe_s3", "moto_s3"]

HOST = "127.0.0.1"
BUCKET = "castore-bench"
RUN = "bench"
CHANGED_EVERY = 10
STEP = 1.001  # epoch 1 scales the changed tensors by this, in place

# Throwaway credentials: moto accepts anything, and they must never be real ones.
_KEY = "castore-bench-key"
_SECRET = "castore-bench-secret"
_REGION = "us-east-1"

SAVE_0 = "castore save, epoch 0"
SAVE_1 = "castore save, epoch 1"
LOAD_0 = "castore load, epoch 0"
LOAD_1 = "castore load, epoch 1"
PEER_SAVE_0 = "torch.save + s3fs upload, epoch 0"
PEER_SAVE_1 = "torch.save + s3fs upload, epoch 1"
PEER_LOAD_0 = "s3fs download + torch.load, epoch 0"
PEER_LOAD_1 = "s3fs download + torch.load, epoch 1"

# Table order, each castore case after the peer it is divided by.
CASES = {
    PEER_SAVE_0: ("save", PEER_SAVE_0),
    SAVE_0: ("save", PEER_SAVE_0),
    PEER_SAVE_1: ("save", PEER_SAVE_1),
    SAVE_1: ("save", PEER_SAVE_1),
    PEER_LOAD_0: ("load", PEER_LOAD_0),
    LOAD_0: ("load", PEER_LOAD_0),
    PEER_LOAD_1: ("load", PEER_LOAD_1),
    LOAD_1: ("load", PEER_LOAD_1),
}


@dataclass(frozen=True, slots=True)
class Wire:
    """What the server saw: requests, request body bytes in, response body bytes out."""

    requests: int = 0
    received: int = 0
    sent: int = 0

    def __sub__(self, other: Wire) -> Wire:
        return Wire(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


class WireCounter:
    """moto's WSGI app wrapped to count every request and body byte, from any client.

    The server-side view covers what client-side counts leave out: castore's transfer
    stats count blob payloads only, not manifest parts, existence checks or listings.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._counts = Wire()

    def snapshot(self) -> Wire:
        with self._lock:
            return self._counts

    def _add(self, requests: int = 0, received: int = 0, sent: int = 0) -> None:
        with self._lock:
            c = self._counts
            self._counts = Wire(c.requests + requests, c.received + received, c.sent + sent)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        self._add(requests=1, received=int(environ.get("CONTENT_LENGTH") or 0))
        return self._count_sent(self._app(environ, start_response))

    def _count_sent(self, body: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for chunk in body:
                self._add(sent=len(chunk))
                yield chunk
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


@dataclass(frozen=True, slots=True)
class S3Server:
    """A live moto S3 endpoint with the benchmark's bucket and its request counter."""

    endpoint_url: str
    wire: WireCounter

    @property
    def storage_options(self) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint_url,
            "key": _KEY,
            "secret": _SECRET,
            "client_kwargs": {"region_name": _REGION},
        }


@contextmanager
def moto_s3() -> Iterator[S3Server]:
    """moto's threaded server on 127.0.0.1 (a free port) with one bucket; stopped on exit.

    werkzeug would log every request at INFO to stderr; it is quieted while the server
    runs. The counter replaces the app on the server object before any request is made.
    moto and boto3 are imported here, not at the top: local runs need neither.
    """
    import boto3
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    try:
        wsgi = server._server  # private, but the only handle on the app it built
        wire = WireCounter(wsgi.app)
        wsgi.app = wire
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        # boto3, not s3fs: s3fs.mkdir sends LocationConstraint=us-east-1, which S3 rejects.
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=_KEY,
            aws_secret_access_key=_SECRET,
            region_name=_REGION,
        )
        try:
            client.create_bucket(Bucket=BUCKET)
        finally:
            client.close()
        yield S3Server(endpoint_url=endpoint_url, wire=wire)
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


@dataclass(slots=True)
class S3Result(Result):
    """A row of the S3 table, with what the case moved over the wire.

    ``peer`` is the case its time is divided by (itself for a peer). ``uploaded`` and
    ``downloaded`` are castore's blob bytes (``transfer_stats``) or the peer's object
    size; ``wire`` is every request and body byte the server saw; ``disk_bytes`` is what
    the epoch occupies in the bucket.
    """

    peer: str = ""
    uploaded: int = 0
    downloaded: int = 0
    wire: Wire = field(default_factory=Wire)


@dataclass(slots=True)
class _Row:
    """One case's attempts so far; byte counts are the last attempt's (all are equal)."""

    seconds: list[float] = field(default_factory=list)
    uploaded: int = 0
    downloaded: int = 0
    stored: int = 0
    wire: Wire = field(default_factory=Wire)
    note: str = ""


def changed_names(state: BenchState) -> list[str]:
    """The tensors epoch 1 changes: every tenth, in the state dict's order."""
    return list(state.tensors)[::CHANGED_EVERY]


def describe_s3(state: BenchState, repeat: int) -> list[str]:
    """Header lines: the server, the epoch-1 change, what the byte and ratio columns mean."""
    changed = changed_names(state)
    changed_bytes = sum(state.tensors[n].numel() * state.tensors[n].element_size() for n in changed)
    return [
        f"server: moto {version('moto')} on 127.0.0.1 in this process (it shares the CPUs "
        f"and the GIL), s3fs {version('s3fs')}; best of {repeat}; a new key prefix per attempt",
        f"epoch 1: every {CHANGED_EVERY}th tensor changed in place ({len(changed)} tensors, "
        f"{100 * changed_bytes / state.nbytes:.1f} % of the bytes); castore loads epoch 0 "
        "into an empty blob cache, then epoch 1",
        "up/down: castore's blob bytes (transfer_stats), the peer's object size; requests: "
        "as the server counted them",
        "x peer: castore time / torch.save+s3fs time, so < 1 means castore is faster; "
        "GB = 1e9 bytes",
    ]


def _check_save(case: str, state: BenchState, *, full: bool) -> Callable[[object], None]:
    """Epoch 0 writes every byte as new, epoch 1 at least the changed tensors' chunks.

    Tiny states pack every tensor into shared blobs, so epoch 1 may rewrite them all.
    """

    def check(info: object) -> None:
        if not isinstance(info, castore.SaveInfo):
            raise AssertionError(f"{case}: save returned {type(info).__name__}, not SaveInfo")
        if info.new_bytes == 0 or (full and info.new_bytes != state.nbytes):
            expected = "all" if full else "some"
            raise AssertionError(
                f"{case}: {info.new_bytes} of {state.nbytes} bytes new; expected {expected}"
            )

    return check


def _check_load(case: str, expected: dict[str, torch.Tensor]) -> Callable[[object], None]:
    return lambda loaded: check_equal(case, expected, loaded)


def _upload(fs: AbstractFileSystem, path: str, tensors: dict[str, torch.Tensor]) -> None:
    """What a torch user does to put a checkpoint on S3 without a local file."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    fs.pipe_file(path, buffer.getvalue())


def _download(fs: AbstractFileSystem, path: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(fs.cat_file(path)), weights_only=True)


def _bucket_bytes(fs: AbstractFileSystem, url: str) -> int:
    """Bytes of every object under ``url`` (a castore store: blobs, manifests, config)."""
    fs.invalidate_cache()  # s3fs would list from what it cached before the last save
    return sum(fs.du(url, total=False).values())


def bench_s3(state: BenchState, server: S3Server, workdir: str, repeat: int) -> list[S3Result]:
    """``repeat`` attempts of both epochs' saves and loads, castore's and the peer's.

    Every load is checked bit for bit against what was saved, and the epoch-1 castore
    load must download exactly the blobs the epoch-1 save uploaded, no more.
    """
    tensors = state.tensors
    originals = {name: tensors[name].clone() for name in changed_names(state)}
    epoch0 = tensors | originals
    options = server.storage_options
    peer_fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    rows = {case: _Row() for case in CASES}

    def timed(case: str, call: Callable[[], object], check: Callable[[object], None]) -> None:
        """One attempt: ``call`` timed (flushed and collected first, checked after)."""
        before = server.wire.snapshot()
        rows[case].seconds += best_of(1, lambda _: call(), check=check)
        rows[case].wire = server.wire.snapshot() - before

    def castore_case(
        case: str, store: castore.Store, call: Callable[[], object], check: Callable[[object], None]
    ) -> castore.TransferStats:
        before = store.transfer_stats()
        timed(case, call, check)
        moved = store.transfer_stats() - before
        rows[case].uploaded, rows[case].downloaded = moved.bytes_uploaded, moved.bytes_downloaded
        return moved

    def upload(case: str, path: str) -> None:
        timed(case, lambda: _upload(peer_fs, path, tensors), lambda _: None)
        rows[case].uploaded = rows[case].stored = peer_fs.size(path)

    def download(case: str, path: str, expected: dict[str, torch.Tensor]) -> None:
        timed(case, lambda: _download(peer_fs, path), _check_load(case, expected))
        rows[case].downloaded = rows[case].stored = peer_fs.size(path)

    def open_store(url: str, cache: str) -> castore.Store:
        cache_options = castore.CacheOptions(directory=cache)
        return castore.open(url, cache=cache_options, progress=False, **options)

    for i in range(repeat):
        prefix = f"{BUCKET}/attempt-{i}"
        url = f"s3://{prefix}/castore"
        scratch = os.path.join(workdir, f"attempt-{i}")  # the blob caches, made on first use

        trainer = open_store(url, os.path.join(scratch, "trainer-cache")).run(RUN)
        saved = castore_case(
            SAVE_0,
            trainer.store,
            partial(trainer.save, tensors, epoch=0),
            _check_save(SAVE_0, state, full=True),
        )
        rows[SAVE_0].stored = _bucket_bytes(peer_fs, url)
        rows[SAVE_0].note = f"{saved.blobs_uploaded} blobs uploaded"
        upload(PEER_SAVE_0, f"{prefix}/epoch-0.pt")

        for name in originals:
            tensors[name].mul_(STEP)
        saved = castore_case(
            SAVE_1,
            trainer.store,
            partial(trainer.save, tensors, epoch=1),
            _check_save(SAVE_1, state, full=False),
        )
        rows[SAVE_1].stored = _bucket_bytes(peer_fs, url) - rows[SAVE_0].stored
        rows[SAVE_1].note = f"{saved.blobs_uploaded} blobs uploaded"
        upload(PEER_SAVE_1, f"{prefix}/epoch-1.pt")

        evaluator = open_store(url, os.path.join(scratch, "evaluator-cache"))
        loaded = castore_case(
            LOAD_0, evaluator, partial(evaluator.run(RUN).load, 0), _check_load(LOAD_0, epoch0)
        )
        rows[LOAD_0].stored = rows[SAVE_0].stored
        rows[LOAD_0].note = f"{loaded.blobs_downloaded} blobs downloaded"
        download(PEER_LOAD_0, f"{prefix}/epoch-0.pt", epoch0)

        loaded = castore_case(
            LOAD_1, evaluator, partial(evaluator.run(RUN).load, 1), _check_load(LOAD_1, tensors)
        )
        if loaded.bytes_downloaded != saved.bytes_uploaded:
            raise AssertionError(
                f"{LOAD_1}: downloaded {loaded.bytes_downloaded} bytes with epoch 0 cached; "
                f"only the {saved.bytes_uploaded} bytes epoch 1 uploaded should be fetched"
            )
        rows[LOAD_1].stored = rows[SAVE_1].stored
        cached = loaded.blobs_from_cache
        rows[LOAD_1].note = f"{loaded.blobs_downloaded} blobs downloaded, {cached} from cache"
        download(PEER_LOAD_1, f"{prefix}/epoch-1.pt", tensors)

        for name, original in originals.items():
            tensors[name].copy_(original)
        peer_fs.rm(prefix, recursive=True)
        shutil.rmtree(scratch)

    return [
        S3Result(
            case,
            kind,
            rows[case].seconds,
            state.nbytes,
            rows[case].stored,
            note=rows[case].note,
            peer=peer,
            uploaded=rows[case].uploaded,
            downloaded=rows[case].downloaded,
            wire=rows[case].wire,
        )
        for case, (kind, peer) in CASES.items()
    ]
