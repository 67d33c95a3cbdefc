"""Polling a run for new checkpoints: the loop behind ``Run.follow``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from castore.errors import InvalidCheckpointError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["follow_epochs"]


def follow_epochs(
    list_epochs: Callable[[], list[int]],
    *,
    poll_s: float,
    since: int | None,
    timeout_s: float | None,
) -> Iterator[int]:
    """Yield every epoch ``list_epochs`` reports, each once: those after ``since`` now,
    in order, then new ones (a late lower epoch too) as later listings show them.

    Lists every ``poll_s`` seconds; with ``timeout_s`` it stops once nothing new has
    appeared for that long, otherwise it runs until the caller stops iterating.
    """
    if poll_s <= 0:
        raise InvalidCheckpointError(f"poll_s must be positive, got {poll_s}")
    seen: set[int] = set()
    last_new = time.monotonic()
    while True:
        fresh = [e for e in list_epochs() if e not in seen and (since is None or e > since)]
        for epoch in fresh:
            seen.add(epoch)
            yield epoch
        now = time.monotonic()
        if fresh:
            last_new = now
        elif timeout_s is not None and now - last_new >= timeout_s:
            return
        wait_s = poll_s
        if timeout_s is not None:
            wait_s = min(poll_s, max(0.0, timeout_s - (now - last_new)))
        time.sleep(wait_s)
