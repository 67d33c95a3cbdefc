"""Live S3 and GCS servers on loopback, one of each per test session.

moto's ``ThreadedMotoServer`` and gcp-storage-emulator run in-process on 127.0.0.1 with
free ports, throwaway credentials and one bucket each. A server that cannot start is an
error, never a skip. Both are adjusted so that exclusive create behaves as on the real
services, because castore's commit protocol rests on it:

- moto checks ``If-None-Match: *`` and then writes, without a lock, on a threaded server,
  so two racing creates can both win. Conditional writes are serialized here (S3 makes
  them atomic).
- The emulator ignores ``ifGenerationMatch`` and silently overwrites. Its upload routes
  are wrapped here to answer 412 Precondition Failed as GCS does, and to accept the
  ``DELETE`` that cancels a resumable upload (gcsfs sends it after a failed chunk).
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import threading
import urllib.request
from dataclasses import dataclass, field
from functools import wraps
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import fsspec
import pytest
from fsspec.asyn import sync

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from fsspec import AbstractFileSystem

# gcsfs 2026.x otherwise swaps in its experimental filesystem, which looks up every bucket
# over gRPC and stalls about 60 s against the emulator. gcsfs reads it once, on import.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

__all__ = ["ObjectServer", "close_filesystem", "gcs_server", "s3_server"]

HOST = "127.0.0.1"
BUCKET = "castore-test"
START_TIMEOUT_S = 10.0

# Throwaway credentials: moto accepts anything, and they must never be real ones.
_S3_KEY = "castore-test-key"
_S3_SECRET = "castore-test-secret"
_S3_REGION = "us-east-1"


@dataclass(frozen=True)
class ObjectServer:
    """A live object store: where it listens, its session bucket, how to reach it."""

    name: str
    protocol: str
    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any]
    _opened: list[AbstractFileSystem] = field(default_factory=list, repr=False, compare=False)

    def url(self, path: str = "") -> str:
        """``s3://bucket/path`` or ``gs://bucket/path``."""
        return f"{self.protocol}://{self.bucket}/{path}".rstrip("/")

    def new_filesystem(self) -> AbstractFileSystem:
        """A fresh filesystem, never fsspec's cached instance; closed at session end."""
        fs = fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)
        self._opened.append(fs)
        return fs

    def close_all(self) -> None:
        for fs in self._opened:
            close_filesystem(fs)
        self._opened.clear()


def close_filesystem(fs: AbstractFileSystem) -> None:
    """Close an s3fs/gcsfs HTTP session now, on its own loop, not at garbage collection.

    Left to the weakref finalizers, sessions are closed during interpreter teardown or
    from whichever thread collects them, which is where "Unclosed client session"
    warnings come from. Idempotent.
    """
    creator = getattr(fs, "_s3creator", None)  # s3fs, once connected
    if creator is not None:
        fs._s3creator = None
        fs._s3 = None
        sync(fs.loop, creator.__aexit__, None, None, None)
        return
    session = getattr(fs, "_session", None)  # gcsfs, once connected
    if session is not None and not session.closed:
        sync(fs.loop, session.close)


def _free_port() -> int:
    """A port that was free on loopback a moment ago (the emulator takes no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _start_within(start: Callable[[], None], what: str) -> None:
    """Run a server's blocking ``start``; raise if it has not returned in time.

    Both servers bind inside their own thread and wait on an event that a failed bind
    never sets, so a plain ``start()`` would hang the session instead of failing it.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"start-{what}", daemon=True)
    thread.start()
    thread.join(START_TIMEOUT_S)
    if errors:
        raise RuntimeError(f"{what} failed to start") from errors[0]
    if thread.is_alive():
        raise RuntimeError(f"{what} did not start within {START_TIMEOUT_S:.0f} s")


# --------------------------------------------------------------------------- S3 (moto)


def _moto_app_class() -> type:
    """moto's WSGI app with conditional writes made atomic, as they are on S3."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    lock = threading.Lock()

    class AtomicConditionalWrites(DomainDispatcherApplication):
        def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
            def start(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
                # werkzeug adds its own Server header; aiohttp's pure-Python parser
                # (python -X dev) rejects the second with "Duplicate 'Server' header".
                kept = [(k, v) for k, v in headers if k.lower() != "server"]
                return start_response(status, kept, *exc_info)

            conditional = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
            if conditional and environ.get("REQUEST_METHOD") in ("PUT", "POST"):
                with lock:
                    return super().__call__(environ, start)
            return super().__call__(environ, start)

    return AtomicConditionalWrites


def _create_s3_bucket(endpoint_url: str, bucket: str) -> None:
    # boto3, not s3fs: s3fs.mkdir sends LocationConstraint=us-east-1, which S3 rejects.
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=_S3_KEY,
        aws_secret_access_key=_S3_SECRET,
        region_name=_S3_REGION,
    )
    try:
        client.create_bucket(Bucket=bucket)
    finally:
        client.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectServer]:
    """moto on 127.0.0.1 (port 0) with one bucket; stopped at session end."""
    from moto.moto_server import threaded_moto_server

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)  # one line per request drowns failure reports
    server = threaded_moto_server.ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    with pytest.MonkeyPatch.context() as patch:
        # Looked up when the server thread builds its app, which start() waits for.
        patch.setattr(threaded_moto_server, "DomainDispatcherApplication", _moto_app_class())
        _start_within(server.start, "moto S3 server")
    try:
        host, port = server.get_host_and_port()
        endpoint_url = f"http://{host}:{port}"
        _create_s3_bucket(endpoint_url, BUCKET)
        s3 = ObjectServer(
            name="s3",
            protocol="s3",
            endpoint_url=endpoint_url,
            bucket=BUCKET,
            storage_options={
                "key": _S3_KEY,
                "secret": _S3_SECRET,
                "endpoint_url": endpoint_url,
                "client_kwargs": {"region_name": _S3_REGION},
            },
        )
        try:
            yield s3
        finally:
            s3.close_all()
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


# ---------------------------------------------------------- GCS (gcp-storage-emulator)

_GCS_WRITE_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Status:
    """An HTTP status the emulator's ``Response`` can send (``http.HTTPStatus`` has no 499)."""

    value: int
    phrase: str


_CLIENT_CLOSED_REQUEST = _Status(499, "Client Closed Request")
_PRECONDITION_MESSAGE = "At least one of the pre-conditions you specified did not hold."


def _upload_target(request: Any, storage: Any) -> tuple[str, str] | None:
    """(bucket, object) an upload request writes, or None if the emulator should decide."""
    from gcp_storage_emulator.exceptions import NotFound

    if "upload_id" in request.query:  # a chunk of a resumable upload, by POST or PUT
        try:
            obj = storage.get_resumable_file_obj(request.query["upload_id"][0])
        except NotFound:
            return None
        return obj["bucket"], obj["name"]
    bucket = request.params["bucket_name"]
    if "name" in request.query:
        return bucket, request.query["name"][0]
    upload_type = request.query.get("uploadType", [""])[0]
    data = request.data if isinstance(request.data, dict) else {}
    meta = data.get("meta", {}) if upload_type == "multipart" else data
    name = meta.get("name") if isinstance(meta, dict) else None
    return (bucket, name) if name else None


def _generation_mismatch(request: Any, storage: Any) -> bool:
    """Whether ``ifGenerationMatch`` is set and the object's generation differs (0: absent)."""
    from gcp_storage_emulator.exceptions import NotFound

    wanted = request.query.get("ifGenerationMatch")
    if not wanted:
        return False
    target = _upload_target(request, storage)
    if target is None:
        return False
    try:
        current = str(storage.get_file_obj(*target).get("generation", "0"))
    except NotFound:
        current = "0"
    return current != wanted[0]


def _honour_generation_match(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an upload handler: 412 on a failed ``ifGenerationMatch``, as GCS answers.

    Checked on the simple and multipart upload, on starting a resumable upload and on
    each of its chunks (GCS checks when the upload completes; a writer that wins
    meanwhile fails this one at its next chunk instead, with the same outcome). The
    lock makes check-and-write atomic even if the emulator ever serves requests on
    several threads; today it serves one at a time.
    """

    @wraps(handler)
    def wrapped(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        with _GCS_WRITE_LOCK:
            if _generation_mismatch(request, storage):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json(
                    {
                        "error": {
                            "code": 412,
                            "message": _PRECONDITION_MESSAGE,
                            "errors": [
                                {
                                    "domain": "global",
                                    "reason": "conditionNotMet",
                                    "message": _PRECONDITION_MESSAGE,
                                    "locationType": "header",
                                    "location": "If-Match",
                                }
                            ],
                        }
                    }
                )
                return None
            return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _cancel_resumable_upload(request: Any, response: Any, storage: Any, *args: Any) -> None:
    """``DELETE`` on a resumable session URL: drop the session and answer 499, as GCS does.

    The emulator has no such route and answers 501, which gcsfs retries for ~30 s and
    then raises instead of the error that made it cancel.
    """
    from gcp_storage_emulator.exceptions import NotFound

    upload_id = request.query.get("upload_id", [""])[0]
    try:
        storage.delete_resumable_file_obj(upload_id)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    response.status = _CLIENT_CLOSED_REQUEST


def _gcs_handlers() -> tuple[tuple[str, dict[str, Callable[..., Any]]], ...]:
    """The emulator's routes with its upload handlers wrapped (see the module docstring)."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    wrapped = {
        objects.insert: _honour_generation_match(objects.insert),
        objects.upload_partial: _honour_generation_match(objects.upload_partial),
    }
    routes = []
    patched = 0
    for regex, methods in server.HANDLERS:
        new = {method: wrapped.get(handler, handler) for method, handler in methods.items()}
        if objects.upload_partial in methods.values():
            new.setdefault(server.DELETE, _cancel_resumable_upload)
        patched += new != methods
        routes.append((regex, new))
    if not patched:
        raise RuntimeError("gcp-storage-emulator routes changed: found no upload handler")
    return tuple(routes)


_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?')


def _original_read_data() -> Callable[..., Any]:
    from gcp_storage_emulator import server

    return server._read_data


_ORIGINAL_READ_DATA = _original_read_data()


def _read_data_exactly(request_handler: Any, query: Any) -> Any:
    """The emulator's request-body reader, with multipart/related bodies split by hand.

    The emulator parses multipart uploads with ``email``'s BytesParser, which expects
    CRLF line breaks; gcsfs separates parts with bare LF, so a blob whose last byte is
    0x0d (one in 256) lost it to the parser. Real GCS keeps every byte, so the fixture
    splits on the line break the body actually uses.
    """
    from gcp_storage_emulator import server

    content_type = request_handler.headers.get("Content-Type") or ""
    if not content_type.startswith("multipart/related"):
        return _ORIGINAL_READ_DATA(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    boundary = _BOUNDARY.search(content_type.encode())
    if not raw or boundary is None:
        return _ORIGINAL_READ_DATA(request_handler, query)
    marker = b"--" + boundary.group(1)
    after = raw.find(marker) + len(marker)
    eol = b"\r\n" if raw[after : after + 2] == b"\r\n" else b"\n"  # gcsfs sends bare LF
    pieces = (eol + raw).split(eol + marker)[1:]
    parts = [
        piece[len(eol) :].partition(eol + eol) for piece in pieces if not piece.startswith(b"--")
    ]
    if len(parts) != 2:
        raise ValueError(f"expected metadata and content parts, got {len(parts)}")
    (_, _, meta), (head, _, content) = parts
    content_types = [
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(eol)
        if line.lower().startswith(b"content-type:")
    ]
    return {
        "meta": json.loads(meta),
        "content": content,
        "content-type": content_types[0] if content_types else "application/octet-stream",
    }


def _check_health(endpoint_url: str) -> None:
    """The emulator answers ``OK`` on ``/``: proves the port is the emulator's."""
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(f"{endpoint_url}/", timeout=5) as reply:
        body = reply.read()
    if body != b"OK":
        raise RuntimeError(f"unexpected health reply from {endpoint_url}: {body[:80]!r}")


def _check_gcsfs_mode() -> None:
    """Fail fast if gcsfs was imported before this module turned its gRPC probing off."""
    import gcsfs
    import gcsfs.core

    if gcsfs.GCSFileSystem is not gcsfs.core.GCSFileSystem:
        raise RuntimeError(
            "gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT enabled; import "
            "tests.servers before anything that imports gcsfs"
        )


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[ObjectServer]:
    """gcp-storage-emulator in memory on 127.0.0.1 with one bucket; stopped at session end."""
    from gcp_storage_emulator import server as emulator

    _check_gcsfs_mode()
    port = _free_port()
    endpoint_url = f"http://{HOST}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(emulator, "HANDLERS", _gcs_handlers())  # read on every request
        patch.setattr(emulator, "_read_data", _read_data_exactly)
        srv = emulator.create_server(HOST, port, in_memory=True, default_bucket=BUCKET)
        with pytest.MonkeyPatch.context() as bind:
            # The emulator serves one request at a time from a listen backlog of 5: 8
            # racing clients overflow it and stall ~1 s in SYN retransmits. Read on bind.
            bind.setattr(http.server.HTTPServer, "request_queue_size", 128)
            _start_within(srv.start, "gcp-storage-emulator")
        try:
            _check_health(endpoint_url)
            gcs = ObjectServer(
                name="gcs",
                protocol="gs",
                endpoint_url=endpoint_url,
                bucket=BUCKET,
                storage_options={"endpoint_url": endpoint_url, "token": "anon", "project": "test"},
            )
            try:
                yield gcs
            finally:
                gcs.close_all()
        finally:
            srv.stop()
