"""bounded_map: input order, the byte budget, the worker bound, and failure handling."""

from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castore._concurrency import bounded_map


class Tracker:
    """Counts bytes and items running at once, as seen from inside ``fn``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.items = 0
        self.max_bytes = 0
        self.max_items = 0
        self.started: list[int] = []
        self.alone: dict[int, bool] = {}

    def run(self, size: int, index: int, delay: float) -> None:
        with self.lock:
            self.bytes += size
            self.items += 1
            self.max_bytes = max(self.max_bytes, self.bytes)
            self.max_items = max(self.max_items, self.items)
            self.started.append(index)
            self.alone[index] = self.items == 1
        time.sleep(delay)
        with self.lock:
            self.alone[index] = self.alone[index] and self.items == 1
            self.bytes -= size
            self.items -= 1


def test_results_keep_input_order():
    delays = [0.004 * ((i * 7) % 5) for i in range(30)]

    def slow_square(i: int) -> int:
        time.sleep(delays[i])
        return i * i

    got = bounded_map(
        slow_square, range(30), size_of=lambda _: 1, workers=6, max_in_flight_bytes=100
    )
    assert got == [i * i for i in range(30)]


@pytest.mark.parametrize("workers", [1, 4])
def test_empty_and_single_inputs(workers):
    assert bounded_map(str, [], size_of=len, workers=workers, max_in_flight_bytes=1) == []
    assert bounded_map(
        str, [5], size_of=lambda _: 10**9, workers=workers, max_in_flight_bytes=1
    ) == ["5"]


@given(
    sizes=st.lists(st.integers(0, 100), min_size=2, max_size=25),
    budget=st.integers(100, 300),
    workers=st.integers(2, 6),
    seed=st.integers(0, 1000),
)
def test_bytes_in_flight_stay_within_the_budget(sizes, budget, workers, seed):
    rng = random.Random(seed)
    delays = [rng.choice([0.0, 0.0005, 0.002]) for _ in sizes]
    tracker = Tracker()
    items = list(enumerate(sizes))
    got = bounded_map(
        lambda item: tracker.run(item[1], item[0], delays[item[0]]) or item[0],
        items,
        size_of=lambda item: item[1],
        workers=workers,
        max_in_flight_bytes=budget,
    )
    assert got == list(range(len(sizes)))
    assert tracker.max_bytes <= budget
    assert tracker.max_items <= workers
    assert sorted(tracker.started) == list(range(len(sizes)))
    assert tracker.bytes == 0


def test_an_item_over_the_budget_runs_alone():
    sizes = [10, 10, 500, 10, 10, 10]
    tracker = Tracker()
    bounded_map(
        lambda item: tracker.run(item[1], item[0], 0.01),
        list(enumerate(sizes)),
        size_of=lambda item: item[1],
        workers=4,
        max_in_flight_bytes=100,
    )
    assert tracker.alone[2]
    assert tracker.max_bytes == 500
    assert tracker.max_items > 1  # the small ones did run together


def test_negative_sizes_count_as_zero():
    tracker = Tracker()
    got = bounded_map(
        lambda item: tracker.run(0, item, 0.005) or item,
        list(range(10)),
        size_of=lambda _: -5,
        workers=3,
        max_in_flight_bytes=1,
    )
    assert got == list(range(10))
    assert tracker.max_items > 1


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("workers", [1, 4])
def test_the_first_exception_propagates_after_running_work_stops(workers):
    tracker = Tracker()
    finished = []

    def fn(i: int) -> int:
        if i == 3:
            raise Boom(f"item {i} failed")
        tracker.run(1, i, 0.01)
        finished.append(i)
        return i

    with pytest.raises(Boom, match=r"^item 3 failed$"):
        bounded_map(fn, range(40), size_of=lambda _: 1, workers=workers, max_in_flight_bytes=4)
    # Nothing is still running when the error arrives, and the tail was never started.
    assert tracker.items == 0
    snapshot = list(finished)
    time.sleep(0.03)
    assert finished == snapshot
    assert len(finished) < 39
    if workers == 1:
        assert finished == [0, 1, 2]


def test_on_result_runs_on_the_calling_thread_for_every_item():
    caller = threading.get_ident()
    seen = []

    def on_result(item: int, result: int) -> None:
        assert threading.get_ident() == caller
        seen.append((item, result))

    def fn(i: int) -> int:
        time.sleep(0.001 * (i % 3))
        return threading.get_ident()

    got = bounded_map(
        fn, range(12), size_of=lambda _: 1, workers=4, max_in_flight_bytes=8, on_result=on_result
    )
    assert sorted(item for item, _ in seen) == list(range(12))
    assert dict(seen) == dict(enumerate(got))
    assert caller not in got  # the work itself ran on pool threads


def test_on_result_errors_propagate():
    def on_result(item: int, _: int) -> None:
        if item == 2:
            raise Boom("progress failed")

    with pytest.raises(Boom, match="progress failed"):
        bounded_map(
            lambda i: i,
            range(6),
            size_of=lambda _: 1,
            workers=2,
            max_in_flight_bytes=2,
            on_result=on_result,
        )


def test_iterables_are_consumed_once():
    got = bounded_map(
        lambda i: -i, (i for i in range(7)), size_of=lambda _: 1, workers=3, max_in_flight_bytes=2
    )
    assert got == [0, -1, -2, -3, -4, -5, -6]
