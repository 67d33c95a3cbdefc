"""TransferStats: what crossed the wire, and what the local cache saved."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

__all__ = ["TransferCounter", "TransferStats"]


@dataclass(frozen=True, slots=True)
class TransferStats:
    """Cumulative counts; subtract two snapshots to get what one operation did."""

    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_downloaded: int = 0
    bytes_downloaded: int = 0
    blobs_from_cache: int = 0
    bytes_from_cache: int = 0

    def __sub__(self, other: TransferStats) -> TransferStats:
        return TransferStats(
            *(getattr(self, f.name) - getattr(other, f.name) for f in fields(self))
        )


class TransferCounter:
    """Thread-safe accumulator behind ``TransferStats`` snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys((f.name for f in fields(TransferStats)), 0)

    def add(self, kind: str, n_bytes: int) -> None:
        """Count one blob of ``n_bytes``; ``kind`` is uploaded, downloaded or from_cache."""
        with self._lock:
            self._counts[f"blobs_{kind}"] += 1
            self._counts[f"bytes_{kind}"] += n_bytes

    def snapshot(self) -> TransferStats:
        with self._lock:
            return TransferStats(**self._counts)
