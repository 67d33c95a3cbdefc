"""Byte progress bars for long transfers: after a couple of seconds, on a terminal only."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress_bar"]

_DELAY_S = 2.0


def progress_bar(total: int, what: str, enabled: bool | None) -> tqdm:
    """``enabled=None`` shows the bar only when stderr is a terminal."""
    return tqdm(
        total=total,
        desc=what,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        delay=_DELAY_S,
        disable=None if enabled is None else not enabled,
        leave=False,
    )
