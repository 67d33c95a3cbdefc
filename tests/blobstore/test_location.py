"""Location: keyed byte I/O on local disk and memory://, checked through the raw filesystem."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from castore.blobstore import open_location
from castore.errors import ConflictError, InvalidCheckpointError, NotFoundError


@pytest.fixture
def location(backend):
    return open_location(backend.url, backend.storage_options)


def test_open_location_roots(backend, location):
    assert location.url == backend.url
    assert location.root == backend.root
    assert location.is_local == (backend.name == "local")
    assert location.path("a/b") == f"{backend.root}/a/b"


@pytest.mark.parametrize("url", ["", None, 3])
def test_open_location_refuses_non_urls(url):
    with pytest.raises(InvalidCheckpointError, match="store URL must be a non-empty str or path"):
        open_location(url)


def test_open_location_accepts_a_path(tmp_path):
    location = open_location(tmp_path)
    assert location.root == str(tmp_path)
    assert location.url == str(tmp_path)
    assert location.is_local


def test_write_read_exists(backend, location):
    assert not location.exists("a/b/c")
    location.write("a/b/c", [b"hello"])
    assert location.exists("a/b/c")
    assert location.read("a/b/c") == b"hello"
    assert backend.raw_fs.cat_file(backend.raw_path("a/b/c")) == b"hello"
    location.write("a/b/c", [memoryview(b"replaced")])
    assert location.read("a/b/c") == b"replaced"
    location.write("empty", [b""])
    assert location.read("empty") == b""
    assert bytes(location.read_view("empty")) == b""


def test_write_joins_parts_in_order(backend, location):
    parts = [b"head", memoryview(b"-mid-"), np.frombuffer(b"tail", dtype=np.uint8), b""]
    location.write("joined", parts)
    assert location.read("joined") == b"head-mid-tail"
    assert backend.raw_fs.cat_file(backend.raw_path("joined")) == b"head-mid-tail"
    view = location.read_view("joined")
    assert bytes(view) == b"head-mid-tail"
    assert isinstance(view, memoryview) == location.is_local  # local files are mapped


def test_read_missing_key_is_not_found(backend, location):
    with pytest.raises(NotFoundError) as info:
        location.read("nope/x")
    assert str(info.value) == f"reading nope/x: not found [store={backend.url}]"
    assert info.value.url == backend.url
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_write_exclusive_creates_then_conflicts(backend, location):
    location.write_exclusive("runs/r/part", b"first")
    with pytest.raises(ConflictError) as info:
        location.write_exclusive("runs/r/part", b"second")
    assert isinstance(info.value, FileExistsError)
    assert str(info.value) == f"creating runs/r/part: already exists [store={backend.url}]"
    assert location.read("runs/r/part") == b"first"
    assert backend.raw_fs.cat_file(backend.raw_path("runs/r/part")) == b"first"


def test_write_exclusive_never_overwrites_a_plain_write(location):
    location.write("k", [b"plain"])
    with pytest.raises(FileExistsError):
        location.write_exclusive("k", b"exclusive")
    assert location.read("k") == b"plain"


def test_concurrent_write_exclusive_has_one_winner(location):
    barrier = threading.Barrier(8)
    winners, losers, others = [], [], []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            location.write_exclusive("race/part", f"writer-{i}".encode())
        except ConflictError:
            losers.append(i)
        except Exception as exc:  # collected, asserted below
            others.append(exc)
        else:
            winners.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert others == []
    assert len(winners) == 1
    assert sorted(winners + losers) == list(range(8))
    assert location.read("race/part") == f"writer-{winners[0]}".encode()


def test_list_names(location):
    assert location.list_names("d") == []
    for key in ("d/b", "d/a", "d/sub/x", "d/sub/y", "other"):
        location.write(key, [b"1"])
    assert location.list_names("d") == ["a", "b", "sub"]
    assert location.list_names("d/sub") == ["x", "y"]
    assert location.list_names("") == ["d", "other"]


def test_list_names_is_fresh(backend, location):
    location.write("d/old", [b"1"])
    assert location.list_names("d") == ["old"]
    backend.raw_fs.pipe_file(backend.raw_path("d/new"), b"1")
    assert location.list_names("d") == ["new", "old"]


def test_find_stats_sizes(location):
    assert location.find_stats("blobs") == {}
    location.write("blobs/aa/bb/one", [b"1"])
    location.write("blobs/aa/cc/three", [b"333"])
    location.write("blobs/empty", [b""])
    location.write("elsewhere", [b"22"])
    sizes = {key: stat.size for key, stat in location.find_stats("blobs").items()}
    assert sizes == {
        "blobs/aa/bb/one": 1,
        "blobs/aa/cc/three": 3,
        "blobs/empty": 0,
    }


def test_delete(backend, location):
    location.write("a/b", [b"1"])
    location.write("a/c", [b"2"])
    location.delete("a/b")
    assert not location.exists("a/b")
    assert not backend.raw_fs.exists(backend.raw_path("a/b"))
    assert location.list_names("a") == ["c"]
    location.delete("a/b")  # already gone: deleting is idempotent on every backend
    location.delete("never/was")
    assert location.list_names("a") == ["c"]


def _temporary_files(root: str) -> list[str]:
    return [
        os.path.join(directory, name)
        for directory, _, names in os.walk(root)
        for name in names
        if ".tmp" in name
    ]


def test_local_writes_leave_no_temporary_files(tmp_path):
    location = open_location(str(tmp_path))
    for i in range(5):
        location.write(f"blobs/x/{i}", [b"data" * i])
        location.write(f"blobs/x/{i}", [b"again"])
    location.write_exclusive("runs/r/part", b"1")
    with pytest.raises(ConflictError):
        location.write_exclusive("runs/r/part", b"2")
    assert _temporary_files(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path / "blobs" / "x")) == ["0", "1", "2", "3", "4"]
    assert location.list_names("runs/r") == ["part"]
