"""Backend exceptions become castore errors here, in one place, and are classified.

fsspec implementations raise builtin ``OSError`` subclasses for most failures (s3fs and
gcsfs translate HTTP errors to them); the HTTP stacks underneath raise a few types of
their own, matched here by class. Only *transient* failures (dropped connections,
timeouts, throttling, server errors) are worth a retry; permanent ones (missing key, no
permission, no bucket) fail at once. The backend exception stays the ``__cause__``.
"""

from __future__ import annotations

import errno
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING

from castore.errors import CastoreError, ConflictError, NotFoundError, StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["backend_errors", "is_transient"]

_PERMANENT_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_TRANSIENT_OS_ERRORS = (ConnectionError, TimeoutError, InterruptedError, BlockingIOError)
# s3fs maps unknown S3 error codes (throttling among them) to EIO, InternalError to EREMOTEIO.
_TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EREMOTEIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT}
)
# gcsfs raises HttpError(code=...) once its own retries are spent.
_TRANSIENT_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})

# (module, class names) of connection-level errors of the HTTP stacks under s3fs and
# gcsfs; looked up only in modules already imported, so nothing heavy is imported here.
_CLIENT_ERRORS = (
    ("aiohttp", ("ClientConnectionError", "ClientPayloadError", "ServerTimeoutError")),
    ("botocore.exceptions", ("HTTPClientError", "ConnectionError")),
    ("requests.exceptions", ("ConnectionError", "Timeout", "ChunkedEncodingError")),
)


def _client_error_types() -> tuple[type[BaseException], ...]:
    found = []
    for module_name, names in _CLIENT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None:
            found.extend(getattr(module, name) for name in names if hasattr(module, name))
    return tuple(found)


def _http_error_type() -> tuple[type[BaseException], ...]:
    module = sys.modules.get("gcsfs.retry")
    return (module.HttpError,) if module is not None else ()


def is_transient(exc: BaseException | None) -> bool:
    """True for failures that another attempt may not meet: retry these, nothing else."""
    if exc is None or isinstance(exc, (CastoreError, *_PERMANENT_OS_ERRORS)):
        return False
    if isinstance(exc, _TRANSIENT_OS_ERRORS):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNOS
    if isinstance(exc, _http_error_type()):
        code = getattr(exc, "code", None)
        return str(code) in {str(c) for c in _TRANSIENT_HTTP_CODES}
    return isinstance(exc, _client_error_types())


@contextmanager
def backend_errors(doing: str, *, url: str) -> Iterator[None]:
    """Translate backend exceptions raised inside the block; ``doing`` starts the message."""
    try:
        yield
    except CastoreError:
        raise
    except FileNotFoundError as exc:
        raise NotFoundError(f"{doing}: not found", url=url) from exc
    except FileExistsError as exc:
        raise ConflictError(f"{doing}: already exists", url=url) from exc
    except PermissionError as exc:
        raise StorageError(f"{doing}: permission denied ({exc})", url=url) from exc
    except (OSError, *_client_error_types(), *_http_error_type()) as exc:
        raise StorageError(f"{doing}: {type(exc).__name__}: {exc}", url=url) from exc
