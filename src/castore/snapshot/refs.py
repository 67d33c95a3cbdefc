"""Value types shared by snapshot and manifest: where each tensor's bytes live."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ChunkRef", "Role", "TensorRef"]


class Role(StrEnum):
    """How a manifest entry gets its data.

    TENSOR holds its own row-major bytes; ALIAS is the very same tensor as entry ``base``
    (tied weights); VIEW is a strided view into STORAGE entry ``base``, for tensors that
    share one storage through different views; STORAGE is bytes only, not a user key.
    """

    TENSOR = "tensor"
    ALIAS = "alias"
    VIEW = "view"
    STORAGE = "storage"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A piece of an entry's bytes: ``length`` bytes at ``offset`` in the decoded blob.

    The pieces of an entry, in order, concatenate to its bytes. ``blob_length`` is the
    decoded size of the whole blob (a pack holds several entries); ``base`` is the delta
    base digest of the blob's frame and ``ancestors`` the bases below it, nearest first,
    down to a full frame, so reachability is known from the manifest alone.
    """

    digest: str
    offset: int
    length: int
    blob_length: int
    base: str | None = None
    ancestors: tuple[str, ...] = ()

    @property
    def lineage(self) -> tuple[str, ...]:
        """Every delta base below the blob, nearest first; empty for a full frame."""
        return () if self.base is None else (self.base, *self.ancestors)


@dataclass(frozen=True, slots=True)
class TensorRef:
    name: str
    role: Role
    dtype: str
    shape: tuple[int, ...]
    chunks: tuple[ChunkRef, ...] = ()
    base: str | None = None
    storage_offset: int = 0
    stride: tuple[int, ...] = ()
    device: str = "cpu"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def has_data(self) -> bool:
        return self.role in (Role.TENSOR, Role.STORAGE)

    @property
    def stored_length(self) -> int:
        """Bytes the entry's chunks carry (zero for aliases and views)."""
        return sum(chunk.length for chunk in self.chunks)
