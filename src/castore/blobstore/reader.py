"""One stored blob, opened for a load: its size, ranges of it read into caller memory.

A load decodes each blob straight into the memory its bytes belong in. For a raw frame
in a local file that is one ``readinto`` of the payload into the destination: the
kernel copies from the page cache once, where decoding from a mapping of the file pays
that copy plus a page fault per mapped page and an ``munmap``. A frame that has to be
decompressed is handed over whole (mapped, for a local file). Other backends download
the frame whole anyway, so their reader serves ranges from those bytes.
"""

from __future__ import annotations

import mmap
import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from castore.blobstore.errors import backend_errors
from castore.blobstore.verified import FileIdentity, identity_of
from castore.errors import IntegrityError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["BlobReader", "BufferReader", "FileReader"]


class BlobReader(ABC):
    """A blob's frame, read by range (``read_into``) or whole (``frame``); close it after.

    ``identity`` names a local file as it was when opened (see ``blobstore.verified``);
    None for bytes in memory, or a file changed too recently to be recorded.
    """

    size: int
    identity: FileIdentity | None = None

    @abstractmethod
    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the frame's bytes from ``offset`` on.

        Raises:
            IntegrityError: the frame ends before ``out`` is full.
        """

    @abstractmethod
    def frame(self) -> bytes | memoryview:
        """The whole frame, without a copy where the backend allows."""

    @abstractmethod
    def close(self) -> None:
        """Release what the reader holds open."""

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class BufferReader(BlobReader):
    """A frame already in memory: downloaded, or read from the local blob cache."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self.size = self._data.nbytes

    def read_into(self, offset: int, out: memoryview) -> None:
        piece = self._data[offset : offset + out.nbytes]
        if piece.nbytes != out.nbytes:
            raise IntegrityError(f"frame ends at byte {self.size}, before {offset + out.nbytes}")
        out.cast("B")[:] = piece

    def frame(self) -> bytes | memoryview:
        return self._data

    def close(self) -> None:
        """Nothing to release: the bytes go with the reader."""


class FileReader(BlobReader):
    """A frame in a local file, read with unbuffered ``readinto`` into the caller's memory.

    Blob files are immutable, so the size taken when the file is opened holds for the
    reads; a file cut short meanwhile raises IntegrityError rather than leave bytes unread.
    """

    def __init__(self, path: str, *, url: str) -> None:
        self._url = url
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115  (closed by close())
        try:
            stat = os.fstat(self._file.fileno())
        except BaseException:
            self._file.close()
            raise
        self.size = stat.st_size
        self.identity = identity_of(stat)

    def read_into(self, offset: int, out: memoryview) -> None:
        view = out.cast("B")
        with backend_errors(f"reading a blob of {self.size} bytes", url=self._url):
            self._file.seek(offset)
            while view.nbytes:
                got = self._file.readinto(view)
                if not got:
                    raise IntegrityError(
                        f"blob file ends at byte {offset}, before {offset + view.nbytes}; "
                        "it changed while it was read"
                    )
                view, offset = view[got:], offset + got

    def frame(self) -> bytes | memoryview:
        if self.size == 0:
            return b""
        with backend_errors(f"mapping a blob of {self.size} bytes", url=self._url):
            return memoryview(mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ))

    def close(self) -> None:
        self._file.close()
