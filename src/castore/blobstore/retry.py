"""Retries with exponential backoff and full jitter, for transient backend failures only."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from castore.blobstore.errors import is_transient
from castore.errors import StorageError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RetryPolicy", "with_retries"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``attempts`` tries; the n-th wait is uniform in [0, min(max, base * 2**n)]."""

    attempts: int = 6
    base_delay_s: float = 0.05
    max_delay_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def delay_s(self, retry: int) -> float:
        return random.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2**retry))


def with_retries(policy: RetryPolicy, call: Callable[[int], T]) -> T:
    """Run ``call(attempt)`` until it succeeds, a permanent error, or the attempts run out.

    ``call`` raises castore errors (see ``backend_errors``); a ``StorageError`` whose cause
    is transient is retried, anything else propagates at once. The attempt number lets a
    call tell a retry from a first try (an exclusive create must).
    """
    attempt = 0
    while True:
        try:
            return call(attempt)
        except StorageError as exc:
            if attempt + 1 >= policy.attempts or not is_transient(exc.__cause__):
                if attempt:
                    exc.add_note(f"gave up after {attempt + 1} attempts")
                raise
        time.sleep(policy.delay_s(attempt))
        attempt += 1
