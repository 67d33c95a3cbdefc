"""BLAKE3-256 digests of decoded bytes: the name of every blob."""

from __future__ import annotations

import blake3

from castore.blobstore.digest import Digest, short
from castore.errors import IntegrityError

__all__ = ["hash_bytes", "verify"]


def hash_bytes(data: bytes | memoryview) -> Digest:
    """Lowercase hex BLAKE3-256 of ``data``; releases the GIL on large buffers."""
    return Digest(blake3.blake3(data).hexdigest())


def verify(data: bytes | memoryview, digest: str) -> None:
    """Raise ``IntegrityError`` unless ``data`` hashes to ``digest``."""
    actual = hash_bytes(data)
    if actual != digest:
        raise IntegrityError(
            f"blob {short(digest)} decoded to {short(actual)}; the stored frame is corrupt. "
            "Run 'castore verify' to list the affected checkpoints",
            digest=digest,
        )
