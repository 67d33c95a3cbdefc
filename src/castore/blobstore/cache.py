"""LocalBlobCache: a digest-keyed read-through cache of blob frames on local disk.

Blobs never change, so the digest is the whole cache key and nothing is ever
invalidated; a cached frame is still verified when it is decoded, and a corrupt one is
discarded and fetched again. Files are written to a temporary name and renamed, so
concurrent processes may share one directory. Least recently used frames (by mtime,
refreshed on every hit) are evicted once the directory outgrows its cap.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid

from castore.blobstore.layout import blob_key

__all__ = ["LocalBlobCache"]

_EVICT_TO = 0.9


class LocalBlobCache:
    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None

    def get(self, digest: str) -> bytes | None:
        path = self._path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return data

    def put(self, digest: str, frame: bytes | memoryview) -> None:
        if len(frame) > self.max_bytes:
            return
        path = self._path(digest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(frame)
        os.replace(tmp, path)
        with self._lock:
            if self._total is None:
                self._total = sum(size for _, _, size in self._entries())
            else:
                self._total += len(frame)
            if self._total > self.max_bytes:
                self._evict()

    def discard(self, digest: str) -> bool:
        """Drop a cached frame (found corrupt); True if there was one."""
        try:
            os.unlink(self._path(digest))
        except FileNotFoundError:
            return False
        return True

    def _path(self, digest: str) -> str:
        return os.path.join(self.directory, *blob_key(digest).split("/"))

    def _entries(self) -> list[tuple[float, str, int]]:
        entries = []
        for folder, _, names in os.walk(os.path.join(self.directory, "blobs")):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    stat = os.stat(path)
                    entries.append((stat.st_mtime, path, stat.st_size))
        return entries

    def _evict(self) -> None:
        """Remove least recently used frames until the cache is below 90% of its cap."""
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if total <= self.max_bytes * _EVICT_TO:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size
        self._total = total
