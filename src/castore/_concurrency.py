"""One thread-pool helper with a memory budget.

BLAKE3, zstd and fsspec's I/O all release the GIL on large buffers, so threads give real
parallelism for castore's work; the byte budget keeps a many-GiB checkpoint from being
encoded all at once.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["bounded_map"]

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    size_of: Callable[[T], int],
    workers: int,
    max_in_flight_bytes: int,
    on_result: Callable[[T, R], None] | None = None,
) -> list[R]:
    """Apply ``fn`` to every item on ``workers`` threads; return the results in input order.

    An item is submitted only while the sizes of the unfinished items stay within
    ``max_in_flight_bytes`` (an item larger than the budget runs alone). The first
    exception cancels what has not started and is raised once running work has stopped.
    ``on_result`` runs on the calling thread as each item finishes (progress, accounting).
    """
    items = list(items)
    results: list[R | None] = [None] * len(items)
    if workers == 1 or len(items) <= 1:
        for i, item in enumerate(items):
            results[i] = fn(item)
            if on_result is not None:
                on_result(item, results[i])  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    in_flight: dict[Future[R], tuple[int, int]] = {}
    budget_used = 0

    def drain(return_when: str) -> None:
        nonlocal budget_used
        done, _ = wait(in_flight, return_when=return_when)
        for future in done:
            index, size = in_flight.pop(future)
            budget_used -= size
            results[index] = future.result()
            if on_result is not None:
                on_result(items[index], results[index])  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="castore") as pool:
        try:
            for index, item in enumerate(items):
                size = max(0, size_of(item))
                while in_flight and (
                    budget_used + size > max_in_flight_bytes or len(in_flight) >= 2 * workers
                ):
                    drain(FIRST_COMPLETED)
                in_flight[pool.submit(fn, item)] = (index, size)
                budget_used += size
            while in_flight:
                drain(FIRST_COMPLETED)
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return results  # type: ignore[return-value]
