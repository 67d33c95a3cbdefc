"""Backend exceptions become castore errors here, in one place.

fsspec implementations raise builtin ``OSError`` subclasses (s3fs and gcsfs translate
their HTTP errors to them), so the table is small; the backend exception is kept as
``__cause__`` for debugging.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from castore.errors import CastoreError, ConflictError, NotFoundError, StorageError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["backend_errors"]


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
    except OSError as exc:
        raise StorageError(f"{doing}: {type(exc).__name__}: {exc}", url=url) from exc
