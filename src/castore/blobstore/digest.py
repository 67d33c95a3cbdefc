"""The digest: lowercase hex of BLAKE3-256. Format checks only; hashing lives in codec."""

from __future__ import annotations

import re
from typing import NewType

__all__ = ["DIGEST_HEX_CHARS", "Digest", "is_digest", "short"]

Digest = NewType("Digest", str)

DIGEST_HEX_CHARS = 64
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def is_digest(text: str) -> bool:
    """True for exactly 64 lowercase hex characters, the only form used in keys."""
    return isinstance(text, str) and _DIGEST_RE.fullmatch(text) is not None


def short(digest: str) -> str:
    """The first 12 characters, enough to name a blob in a message."""
    return digest[:12]
