"""Byte accounting for ``du``: what checkpoints hold against what the store keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from castore.blobstore.store import BlobStore

__all__ = ["StoreUsage", "measure_usage"]


@dataclass(frozen=True, slots=True)
class StoreUsage:
    """``logical_bytes`` sums every checkpoint's tensor bytes (what one file per checkpoint
    would take); ``stored_bytes`` is what the blobs take on storage; ``dedup_ratio`` their
    quotient."""

    runs: int
    checkpoints: int
    logical_bytes: int
    stored_bytes: int
    blobs: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 0.0


def measure_usage(blobs: BlobStore, *, runs: int, logical_bytes: list[int]) -> StoreUsage:
    sizes = blobs.sizes()
    return StoreUsage(
        runs=runs,
        checkpoints=len(logical_bytes),
        logical_bytes=sum(logical_bytes),
        stored_bytes=sum(sizes.values()),
        blobs=len(sizes),
    )
