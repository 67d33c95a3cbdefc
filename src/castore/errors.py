"""The castore error hierarchy.

One base class, a few subclasses that also inherit the builtin a generic caller already
catches (a missing blob is a ``FileNotFoundError``, a lost commit race a
``FileExistsError``), and structured context so every message names what it concerns.
"""

from __future__ import annotations

__all__ = [
    "BlobNotFoundError",
    "CastoreError",
    "ConflictError",
    "FormatError",
    "IntegrityError",
    "InvalidCheckpointError",
    "NotFoundError",
    "QueryError",
    "StorageError",
    "UnsafeLoadError",
    "check_format_version",
]

_DIGEST_SHOWN = 12


class CastoreError(Exception):
    """Base of every error castore raises on purpose.

    The keyword context (run, epoch, tensor, digest, url) is kept as attributes and
    appended to ``str()`` as ``[run=ppo epoch=40 tensor=fc.weight blob=3fa2c1...]``.
    """

    def __init__(
        self,
        message: str,
        *,
        run: str | None = None,
        epoch: int | None = None,
        tensor: str | None = None,
        digest: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run = run
        self.epoch = epoch
        self.tensor = tensor
        self.digest = digest
        self.url = url

    def __str__(self) -> str:
        parts = []
        if self.url is not None:
            parts.append(f"store={self.url}")
        if self.run is not None:
            parts.append(f"run={self.run}")
        if self.epoch is not None:
            parts.append(f"epoch={self.epoch}")
        if self.tensor is not None:
            parts.append(f"tensor={self.tensor}")
        if self.digest is not None:
            parts.append(f"blob={self.digest[:_DIGEST_SHOWN]}…")
        if not parts:
            return self.message
        return f"{self.message} [{' '.join(parts)}]"


class NotFoundError(CastoreError, LookupError):
    """A store, run, epoch, tensor or metric that does not exist."""


class BlobNotFoundError(NotFoundError, FileNotFoundError):
    """A blob that a checkpoint references is missing from the store."""


class IntegrityError(CastoreError):
    """Stored bytes do not decode to their digest: bad magic, truncation, corruption."""


class ConflictError(CastoreError, FileExistsError):
    """The epoch is already committed, or another writer won the race to commit it."""


class FormatError(CastoreError):
    """A store, frame or manifest written in a format this castore cannot read."""


def check_format_version(
    version: object,
    readable: int,
    what: str,
    *,
    advice: str = "upgrade castore",
    run: str | None = None,
    epoch: int | None = None,
    url: str | None = None,
) -> int:
    """``version`` of a ``what`` (a store, a manifest part, ...) if this castore reads it.

    Raises:
        FormatError: a version that is not an int, or newer than ``readable``; the message
            names both versions.
    """
    if not isinstance(version, int) or version > readable:
        raise FormatError(
            f"{what} format version {version} is newer than this castore reads ({readable}); "
            f"{advice}",
            run=run,
            epoch=epoch,
            url=url,
        )
    return version


class UnsafeLoadError(CastoreError):
    """Loading would unpickle objects and the caller did not pass ``trust=True``."""


class InvalidCheckpointError(CastoreError, ValueError):
    """Bad input, refused before anything is written."""


class QueryError(CastoreError, ValueError):
    """A SQL query over the manifests that DuckDB rejected."""


class StorageError(CastoreError, OSError):
    """The storage backend failed; the backend's exception is the ``__cause__``."""
