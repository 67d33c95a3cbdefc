"""Decoded blobs kept in memory while a run is followed: the next epoch's delta bases.

An evaluator that follows a run loads epoch after epoch, and each chunk of epoch N+1 is
usually a delta against the same chunk of epoch N. Decoding it from the store means
walking the chain back to its full frame, up to ``CodecOptions.max_chain`` + 1 frames
per chunk; with epoch N's decoded bytes at hand it is one frame. So while a run is
followed (``Run.follow``) a store keeps copies of the blobs its loads decoded and
verified, by digest, up to a byte budget. A blob used as a delta base goes first when
room is needed (the next epoch's chunks are deltas against the newest ones, each used
once), then the least recently kept. Names are digests of the decoded bytes, so an
entry can never go stale; a load that uses one as a base still hashes its own result.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

__all__ = ["DecodedBlobs"]


class DecodedBlobs:
    """Verified decoded bytes by digest, up to ``budget`` bytes. Thread-safe."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def get(self, digest: str, *, as_base: bool = False) -> np.ndarray | None:
        """The kept bytes of ``digest`` (read-only), or None. Bytes taken ``as_base`` are
        the first to be forgotten; others are kept as if new."""
        with self._lock:
            found = self._kept.get(digest)
            if found is not None:
                self._kept.move_to_end(digest, last=not as_base)
            return found

    def keep(self, digest: str, data: np.ndarray) -> None:
        """Keep a copy of ``data``, the verified decoded bytes of ``digest``, making room as
        the module says; bytes larger than the whole budget are not kept."""
        if data.nbytes > self.budget:
            return
        with self._lock:
            if digest in self._kept:
                self._kept.move_to_end(digest)
                return
        copy = np.array(data, dtype=np.uint8, copy=True)
        copy.flags.writeable = False
        with self._lock:
            if digest in self._kept:
                return
            while self._used + copy.nbytes > self.budget:
                _, dropped = self._kept.popitem(last=False)
                self._used -= dropped.nbytes
            self._kept[digest] = copy
            self._used += copy.nbytes
