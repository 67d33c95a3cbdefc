"""Fetching one blob into a caller's buffer, following a delta frame to its base."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from castore.blobstore.digest import Digest
from castore.codec.frame import decode_frame_into
from castore.errors import IntegrityError

if TYPE_CHECKING:
    from castore.blobstore.store import BlobStore

__all__ = ["fetch_into"]


def fetch_into(
    blobs: BlobStore, digest: Digest, out: np.ndarray, *, from_store: bool = False
) -> None:
    """Fetch one blob, decode it into ``out`` and verify it there; a delta frame's base is
    fetched the same way.

    A frame that fails verification is fetched once more from the store when the first
    copy came from the local cache (then discarded): the store's copy decides.
    """

    def base_bytes(base: str) -> np.ndarray:
        decoded = np.empty(out.size, dtype=np.uint8)
        fetch_into(blobs, Digest(base), decoded)
        return decoded

    try:
        decode_frame_into(blobs.get(digest), out, digest=digest, get_base=base_bytes)
    except IntegrityError:
        if from_store or not blobs.discard_cached(digest):
            raise
        fetch_into(blobs, digest, out, from_store=True)
