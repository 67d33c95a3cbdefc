"""Where a store lives: an fsspec filesystem, a root path in it, and keyed byte I/O.

Keys are relative, ``/``-separated (see ``layout``). Writes never expose partial
content: local files are written to a temporary name and renamed (or hard-linked, for
an exclusive create), object stores make a PUT visible whole. Every operation is retried
on transient backend failures (see ``retry``).
"""

from __future__ import annotations

import mmap
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from castore.blobstore.errors import backend_errors
from castore.blobstore.reader import BlobReader, BufferReader, FileReader
from castore.blobstore.retry import RetryPolicy, with_retries
from castore.errors import ConflictError, InvalidCheckpointError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    Buffer = bytes | memoryview | np.ndarray

    from fsspec import AbstractFileSystem

__all__ = ["FileStat", "Location", "open_location"]

T = TypeVar("T")

# MemoryFileSystem checks then writes; one lock makes its exclusive create atomic within
# the process, which is all a memory filesystem spans.
_MEMORY_CREATE_LOCK = threading.Lock()


# Where each fsspec backend reports a file's modification time: local disk "mtime" (a
# float), gcsfs "mtime" (a datetime) or "updated" (ISO text), s3fs "LastModified" (a
# datetime), memory "created" (a float from find, a datetime from info).
_MTIME_FIELDS = ("mtime", "LastModified", "updated", "created")


@dataclass(frozen=True, slots=True)
class FileStat:
    """A file's size and modification time in seconds since the Unix epoch (None when
    the backend reports none)."""

    size: int
    mtime_s: float | None


@dataclass(frozen=True, slots=True)
class Location:
    """A store root on an fsspec filesystem."""

    fs: AbstractFileSystem
    root: str
    url: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root or "/"

    def read(self, key: str) -> bytes:
        return self._io(f"reading {key}", lambda: self.fs.cat_file(self.path(key)))

    def exists(self, key: str) -> bool:
        path = self.path(key)

        def check() -> bool:
            self.fs.invalidate_cache(path)  # s3fs and gcsfs answer from cached listings
            return self.fs.exists(path)

        return self._io(f"checking {key}", check)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``key`` (fewer at its end): one ranged GET remotely."""
        path = self.path(key)
        return self._io(f"reading {key}", lambda: self.fs.cat_file(path, start=start, end=end))

    def read_view(self, key: str) -> bytes | memoryview:
        """Like ``read``, but a local file is memory-mapped rather than copied."""
        if not self.is_local:
            return self.read(key)
        return self._io(f"reading {key}", lambda: _map_local(self.path(key)))

    def open_reader(self, key: str) -> BlobReader:
        """``key`` opened for reading by range: a local file stays on disk and is read into
        the caller's memory; any other backend downloads it whole first."""
        if not self.is_local:
            return BufferReader(self.read(key))
        path = self.path(key)
        return self._io(f"reading {key}", lambda: FileReader(path, url=self.url))

    def write(self, key: str, parts: Sequence[Buffer]) -> None:
        """Write ``key`` whole from ``parts`` in order; an existing key is replaced (used for
        content-addressed keys, whose content never differs)."""
        path = self.path(key)
        if self.is_local:
            self._io(f"writing {key}", lambda: _write_local(path, parts, exclusive=False))
        else:
            payload = b"".join(parts)
            self._io(f"writing {key}", lambda: self._pipe(path, payload, "overwrite"))

    def write_exclusive(self, key: str, data: bytes) -> None:
        """Create ``key`` whole, or raise ``ConflictError`` if it exists; never overwrites.

        A retry after a transient failure may find the key created by the attempt whose
        answer was lost; it counts as ours when it holds exactly our bytes.
        """
        path = self.path(key)

        def create(attempt: int) -> None:
            try:
                with backend_errors(f"creating {key}", url=self.url):
                    if self.is_local:
                        _write_local(path, [data], exclusive=True)
                    elif isinstance(self.fs, MemoryFileSystem):
                        with _MEMORY_CREATE_LOCK:
                            self.fs.pipe_file(path, data, mode="create")
                    else:
                        self._pipe(path, data, "create")
            except ConflictError:
                if attempt == 0 or self.read(key) != data:
                    raise

        with_retries(self.retry, create)

    def list_names(self, prefix: str) -> list[str]:
        """Names directly under ``prefix`` (files and folders), freshly listed, sorted."""
        path = self.path(prefix)

        def names() -> list[str]:
            self.fs.invalidate_cache(path)
            try:
                entries = self.fs.ls(path, detail=False)
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

        return self._io(f"listing {prefix or '/'}", names)

    def find_stats(self, prefix: str) -> dict[str, FileStat]:
        """Every file under ``prefix``, recursively, with its size and modification time."""
        path = self.path(prefix)
        start = len(self.root) + 1

        def stats() -> dict[str, FileStat]:
            self.fs.invalidate_cache(path)
            try:
                found = self.fs.find(path, detail=True)
            except FileNotFoundError:
                return {}
            return {p[start:]: _file_stat(info) for p, info in found.items()}

        return self._io(f"listing {prefix or '/'}", stats)

    def stat(self, key: str) -> FileStat | None:
        """Size and modification time of ``key`` asked afresh, or None if it is gone."""
        path = self.path(key)

        def info() -> FileStat:
            self.fs.invalidate_cache(path)
            return _file_stat(self.fs.info(path))

        try:
            return self._io(f"checking {key}", info)
        except NotFoundError:
            return None

    def delete(self, key: str) -> None:
        """Remove ``key``; a key that is already gone counts as deleted on every backend."""
        try:
            self._io(f"deleting {key}", lambda: self.fs.rm_file(self.path(key)))
        except NotFoundError:
            return

    def _pipe(self, path: str, data: bytes, mode: str) -> None:
        """``pipe_file``, making the parent folder on filesystems that have real folders."""
        try:
            self.fs.pipe_file(path, data, mode=mode)
        except FileNotFoundError:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            self.fs.pipe_file(path, data, mode=mode)

    def _io(self, doing: str, operation: Callable[[], T]) -> T:
        def attempt(_: int) -> T:
            with backend_errors(doing, url=self.url):
                return operation()

        return with_retries(self.retry, attempt)


def open_location(
    url: str,
    storage_options: dict[str, object] | None = None,
    retry: RetryPolicy | None = None,
) -> Location:
    """Resolve ``url`` (a path or any fsspec URL) with options passed through to fsspec."""
    if not isinstance(url, str | os.PathLike) or not str(url):
        raise InvalidCheckpointError(f"store URL must be a non-empty str or path, got {url!r}")
    url = os.fspath(url)
    with backend_errors("opening the store", url=url):
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return Location(fs=fs, root=root.rstrip("/"), url=url, retry=retry or RetryPolicy())


def _file_stat(info: dict[str, object]) -> FileStat:
    return FileStat(size=int(info.get("size") or 0), mtime_s=_mtime_s(info))  # type: ignore[call-overload]


def _mtime_s(info: dict[str, object]) -> float | None:
    """The modification time in ``info``, whichever field and type the backend uses."""
    for name in _MTIME_FIELDS:
        value = info.get(name)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    return None


def _write_local(path: str, parts: Sequence[Buffer], *, exclusive: bool) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        f = open(tmp, "xb")  # noqa: SIM115  (closed below; the folder may need making first)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(tmp, "xb")  # noqa: SIM115
    with f:
        for part in parts:
            f.write(part)
    try:
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if exclusive:
            os.unlink(tmp)


def _map_local(path: str) -> bytes | memoryview:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""
        return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
