"""Blob files this machine has verified since it booted, so a load hashes each one once.

Beyond copying bytes from the page cache, hashing is the one cost a verified local load
pays (BLAKE3 runs at ~7 GB/s a core, the copy at ~18 GB/s). A blob file's bytes cannot
change without its identity changing: writing to it moves its ctime (which no call can
set back), replacing it changes its inode. So once a load has hashed a blob file that
decodes on its own (no delta base), the file's identity (device, inode, size, mtime,
ctime) is recorded with the digest, and later loads, in any process of this user, trust
the file while that identity holds. A file changed less than ``RACY_NS`` before it was
opened is never recorded: a change within the same coarse clock tick could leave its
timestamps as they were (git's "racily clean" index entries).

Records are appended to ``<cache dir>/verified/<boot id>`` (72 bytes each, one write per
record, so concurrent processes do not interleave): a reboot, after which a write the
kernel had not flushed may read back as zeros, starts afresh. ``castore verify`` always
hashes, whatever is recorded.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from castore.blobstore.digest import Digest

__all__ = ["RACY_NS", "FileIdentity", "VerifiedFiles", "boot_id", "identity_of"]

RACY_NS = 100_000_000
"""Files changed this recently (100 ms) are not recorded: far above any timestamp tick."""

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_RECORD = struct.Struct("<QQQqq32s")
# Beyond this the memo stops growing on disk (about 930k records); memory still serves.
_MAX_FILE_BYTES = 64 * 1024 * 1024


class FileIdentity(NamedTuple):
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


@cache
def boot_id() -> str | None:
    """This boot's id (Linux), or None where the system has none."""
    try:
        with open(_BOOT_ID) as f:
            return f.read().strip() or None
    except OSError:
        return None


def identity_of(stat: os.stat_result) -> FileIdentity | None:
    """The identity of a file from its (f)stat taken just now; None while it is racy."""
    if time.time_ns() - stat.st_ctime_ns < RACY_NS:
        return None
    return FileIdentity(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class VerifiedFiles:
    """The record of verified blob files for one boot, shared by the processes of a user."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._known: dict[tuple[int, int], tuple[FileIdentity, bytes]] = {}
        self._read_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def this_boot(cls, cache_dir: str) -> VerifiedFiles | None:
        """The record under ``cache_dir`` for this boot; None without a boot id."""
        boot = boot_id()
        if boot is None:
            return None
        return cls(os.path.join(cache_dir, "verified", boot))

    def trusts(self, digest: Digest, identity: FileIdentity) -> bool:
        """True when a file of exactly this identity was verified to hold ``digest``."""
        key = (identity.device, identity.inode)
        with self._lock:
            if key not in self._known:
                self._read_new_records()
            known = self._known.get(key)
        return known is not None and known == (identity, bytes.fromhex(digest))

    def record(self, digest: Digest, identity: FileIdentity) -> None:
        """Note that the file of ``identity`` was hashed and holds ``digest``.

        Failing to write the record (a read-only or full cache directory) only costs a
        later load the hash, so it is not an error.
        """
        raw = bytes.fromhex(digest)
        with self._lock:
            self._known[(identity.device, identity.inode)] = (identity, raw)
        with contextlib.suppress(OSError):
            self._append(_RECORD.pack(*identity, raw))

    def _append(self, record: bytes) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            self._start_file()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _MAX_FILE_BYTES:
                os.write(fd, record)
        finally:
            os.close(fd)

    def _start_file(self) -> None:
        """Create the folder, removing the records of earlier boots."""
        folder = os.path.dirname(self.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for name in os.listdir(folder):
            if name != os.path.basename(self.path):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))

    def _read_new_records(self) -> None:
        """Take in records other processes appended since the last read (under the lock)."""
        try:
            if os.stat(self.path).st_size - self._read_bytes < _RECORD.size:
                return
            with open(self.path, "rb") as f:
                f.seek(self._read_bytes)
                data = f.read()
        except OSError:
            return
        whole = len(data) - len(data) % _RECORD.size
        for offset in range(0, whole, _RECORD.size):
            *fields, raw = _RECORD.unpack_from(data, offset)
            identity = FileIdentity(*fields)
            self._known[(identity.device, identity.inode)] = (identity, raw)
        self._read_bytes += whole
