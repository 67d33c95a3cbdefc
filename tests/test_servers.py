"""The live S3 and GCS servers behave as castore needs, checked through raw s3fs/gcsfs.

These pin the fsspec operations castore uses (``pipe_file``, exclusive create,
``cat_file``, ``exists``, ``ls``, ``find``, ``rm_file``) against both servers, so that a
contract-suite failure can be told apart from a server or client quirk.
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import fsspec
import pytest

from tests.servers import close_filesystem

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fsspec import AbstractFileSystem

    from tests.servers import ObjectServer

MiB = 2**20
ALL_BYTES = bytes(range(256)) * 4  # CR, LF and multipart boundary characters included


@pytest.fixture(params=["s3", "gcs"])
def server(request: pytest.FixtureRequest) -> ObjectServer:
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture
def fs(server: ObjectServer) -> Iterator[AbstractFileSystem]:
    filesystem = server.new_filesystem()
    yield filesystem
    close_filesystem(filesystem)


@pytest.fixture
def root(server: ObjectServer) -> str:
    """A unique prefix in the session bucket."""
    return f"{server.bucket}/{uuid.uuid4().hex}"


def test_servers_listen_on_loopback(server: ObjectServer) -> None:
    assert server.endpoint_url.startswith("http://127.0.0.1:")
    assert server.url("a/b") == f"{server.protocol}://{server.bucket}/a/b"


def test_round_trip(fs: AbstractFileSystem, root: str) -> None:
    fs.pipe_file(f"{root}/k", ALL_BYTES)
    assert fs.cat_file(f"{root}/k") == ALL_BYTES
    fs.pipe_file(f"{root}/k", b"replaced")
    assert fs.cat_file(f"{root}/k") == b"replaced"


@pytest.mark.parametrize("tail", [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"--"])
def test_every_byte_survives_at_the_end(fs: AbstractFileSystem, root: str, tail: bytes) -> None:
    data = bytes(range(256)) * 3 + tail
    for _ in range(2):  # a fresh object, then an overwrite
        fs.pipe_file(f"{root}/tail", data)
        fs.invalidate_cache()
        assert fs.cat_file(f"{root}/tail") == data


def test_storage_options_resolve_a_url(server: ObjectServer, root: str) -> None:
    """The options work the way castore passes them: ``url_to_fs(url, **options)``."""
    key = root.split("/", 1)[1]
    other, path = fsspec.core.url_to_fs(
        server.url(f"{key}/x"), skip_instance_cache=True, **server.storage_options
    )
    try:
        other.pipe_file(path, b"via url")
        assert other.cat_file(path) == b"via url"
    finally:
        close_filesystem(other)


def test_ls_and_find_nested(fs: AbstractFileSystem, root: str) -> None:
    files = {"a/1": b"x", "a/b/2": b"yy", "a/b/c/3": b"zzz", "d": b""}
    for key, data in files.items():
        fs.pipe_file(f"{root}/{key}", data)
    fs.invalidate_cache(root)
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    assert names == ["a", "d"]
    fs.invalidate_cache(f"{root}/a/b")
    assert sorted(fs.ls(f"{root}/a/b", detail=False)) == [f"{root}/a/b/2", f"{root}/a/b/c"]
    found = fs.find(root, detail=True)
    assert {p: int(info["size"]) for p, info in found.items()} == {
        f"{root}/{k}": len(v) for k, v in files.items()
    }


def test_missing_prefix_lists_nothing(fs: AbstractFileSystem, root: str) -> None:
    assert fs.find(f"{root}/nothing", detail=True) == {}
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{root}/nothing")


def test_exists_and_rm_file(fs: AbstractFileSystem, root: str) -> None:
    path = f"{root}/gone"
    assert not fs.exists(path)
    fs.pipe_file(path, b"data")
    assert fs.exists(path)
    fs.rm_file(path)
    fs.invalidate_cache(root)
    assert not fs.exists(path)
    with pytest.raises(FileNotFoundError):
        fs.cat_file(path)


def test_empty_object(fs: AbstractFileSystem, root: str) -> None:
    fs.pipe_file(f"{root}/empty", b"")
    assert fs.cat_file(f"{root}/empty") == b""
    assert fs.find(root, detail=True)[f"{root}/empty"]["size"] == 0
    fs.pipe_file(f"{root}/empty-x", b"", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{root}/empty-x", b"", mode="create")


# gcsfs hands aiohttp the whole body as bytes, and aiohttp warns above 1 MiB.
@pytest.mark.filterwarnings(
    "ignore:Sending a large body directly with raw bytes:ResourceWarning:aiohttp"
)
def test_large_object_single_request(fs: AbstractFileSystem, root: str) -> None:
    """6 MiB: above S3's 5 MiB part minimum, sent whole as castore sends its blobs."""
    data = os.urandom(6 * MiB)
    fs.pipe_file(f"{root}/big", data, mode="create")
    assert fs.cat_file(f"{root}/big") == data
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{root}/big", b"", mode="create")
    assert fs.cat_file(f"{root}/big") == data


# s3fs goes multipart from 2 * chunksize (parts of 5 MiB, the S3 minimum); gcsfs goes
# resumable from chunksize (a multiple of 256 KiB). Defaults are 50 MiB for both.
CHUNKED = {"s3": (5 * MiB, 11 * MiB), "gcs": (256 * 1024, MiB + 17)}


def test_large_object_chunked_upload(fs: AbstractFileSystem, server: ObjectServer, root: str):
    """S3 multipart / GCS resumable, including exclusive create on that path."""
    chunksize, size = CHUNKED[server.name]
    data = os.urandom(size)
    fs.pipe_file(f"{root}/big", data, chunksize=chunksize, mode="create")
    assert fs.cat_file(f"{root}/big") == data
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{root}/big", data[::-1], chunksize=chunksize, mode="create")
    assert fs.cat_file(f"{root}/big") == data
    fs.pipe_file(f"{root}/big", data[::-1], chunksize=chunksize)
    assert fs.cat_file(f"{root}/big") == data[::-1]


def test_create_twice_raises_file_exists(fs: AbstractFileSystem, root: str) -> None:
    fs.pipe_file(f"{root}/commit", b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(f"{root}/commit", b"second", mode="create")
    assert fs.cat_file(f"{root}/commit") == b"first"


@pytest.fixture
def eager_thread_switching() -> Iterator[None]:
    """Switch threads often, so that a check-then-write race in a server shows up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _race_to_create(fs: AbstractFileSystem, path: str, payloads: list[bytes], chunksize: int):
    """Start one exclusive create per payload at once; which of them succeeded."""
    barrier = threading.Barrier(len(payloads))

    def create(data: bytes) -> bool:
        barrier.wait()
        try:
            fs.pipe_file(path, data, chunksize=chunksize, mode="create")
        except FileExistsError:
            return False
        return True

    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(create, payloads))


@pytest.mark.usefixtures("eager_thread_switching")
@pytest.mark.parametrize("chunked", [False, True], ids=["single", "chunked"])
def test_racing_creates_have_one_winner(
    fs: AbstractFileSystem, server: ObjectServer, root: str, chunked: bool
) -> None:
    """8 writers, one key: exactly one wins, and its bytes are what is stored."""
    chunksize, size = CHUNKED[server.name] if chunked else (50 * MiB, 64)
    for attempt in range(1 if chunked else 6):
        path = f"{root}/race-{attempt}"
        payloads = [bytes([i]) * size for i in range(8)]
        won = _race_to_create(fs, path, payloads, chunksize)
        assert won.count(True) == 1, f"round {attempt}: winners {won}"
        assert fs.cat_file(path) == payloads[won.index(True)]
