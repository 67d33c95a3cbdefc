"""Writes that one process makes for all, under ``torch.distributed``.

In data-parallel training every rank holds the same weights, so one copy is enough: rank 0
writes, and every rank gets its result (or its error) through one broadcast, which is
also the barrier that lets any rank read the checkpoint right after. Every rank must
call, as with any collective; without an initialised process group the action simply runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import torch.distributed as dist

from castore.errors import CastoreError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["is_writer_rank", "on_rank_zero"]

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_writer_rank() -> bool:
    return not _distributed() or dist.get_rank() == 0


def on_rank_zero(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 and hand its result to every rank.

    Raises:
        CastoreError: on the other ranks, when rank 0's action failed (rank 0 raises
            the original error).
    """
    if not _distributed():
        return action()
    outcome: list[object] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome[0] = ("ok", action())
        except Exception as exc:  # every rank must reach the broadcast
            failure = exc
            outcome[0] = ("error", f"{type(exc).__name__}: {exc}")
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    status, value = outcome[0]  # type: ignore[misc]
    if status == "error":
        raise CastoreError(f"rank 0 failed to write the checkpoint: {value}")
    return value  # type: ignore[return-value]
