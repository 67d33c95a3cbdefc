"""Everything at once on one store: two trainers (one applying retention), an evaluator
loading and annotating, and garbage collection with a grace period of 0, in threads.

gc's one assumption, that no save outlives the grace period, is modelled exactly: after
each pass the collector waits until every save that was in flight has finished, then
runs the next pass. Nothing committed and kept may be lost.
"""

from __future__ import annotations

import threading
import traceback
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from tests.maintenance.helpers import open_store

if TYPE_CHECKING:
    from collections.abc import Iterator

EPOCHS = 12
FROZEN = torch.arange(8192.0)  # shared by every checkpoint of both runs


def state_for(run: str, epoch: int) -> dict:
    generator = torch.Generator().manual_seed(hash((run, epoch)) % 2**31)
    return {
        "frozen": FROZEN,
        "w": torch.randn(6144, generator=generator),
        "b": torch.randn(16, generator=generator),
    }


def assert_exact(loaded: dict, run: str, epoch: int) -> None:
    expected = state_for(run, epoch)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), (run, epoch, key)


class SavesInFlight:
    """Which saves are running, so the collector can wait out those it overlapped."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running: set[int] = set()
        self._next = 0

    @contextmanager
    def saving(self) -> Iterator[None]:
        with self._changed:
            ticket, self._next = self._next, self._next + 1
            self._running.add(ticket)
        try:
            yield
        finally:
            with self._changed:
                self._running.discard(ticket)
                self._changed.notify_all()

    def wait_out_current(self) -> None:
        with self._changed:
            current = set(self._running)
            self._changed.wait_for(lambda: not current & self._running)


def test_trainers_evaluator_and_gc_at_once(store_url):
    open_store(store_url)  # create castore.json once, before the race
    in_flight = SavesInFlight()
    trainers_done = threading.Event()
    errors: list[str] = []
    reports = []

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except BaseException:
                errors.append(traceback.format_exc())

        return run

    def trainer(name: str, keep_last: int | None) -> None:
        run = open_store(store_url).run(name)
        for epoch in range(EPOCHS):
            with in_flight.saving():
                run.save(state_for(name, epoch), epoch=epoch, metrics={"loss": 1.0 / (epoch + 1)})
            if keep_last:
                run.retain(keep_last=keep_last)

    def evaluator() -> None:
        run = open_store(store_url).run("t1")
        scored: set[int] = set()
        while len(scored) < EPOCHS:
            finished = trainers_done.is_set()
            for epoch in sorted(set(run.epochs()) - scored):
                assert_exact(run.load(epoch), "t1", epoch)
                run.annotate(epoch, {"score": float(epoch)})
                scored.add(epoch)
            assert not finished or len(scored) == EPOCHS
            trainers_done.wait(0.002)

    def collector() -> None:
        store = open_store(store_url)
        while not trainers_done.is_set():
            reports.append(store.gc(grace_s=0))
            in_flight.wait_out_current()

    threads = [
        threading.Thread(target=guarded(lambda: trainer("t1", None))),
        threading.Thread(target=guarded(lambda: trainer("t2", 2))),
        threading.Thread(target=guarded(evaluator)),
        threading.Thread(target=guarded(collector)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads[:2]:
        thread.join(timeout=120)
    trainers_done.set()
    for thread in threads[2:]:
        thread.join(timeout=120)
    assert not errors, "\n".join(errors)
    assert len(reports) >= 2

    store = open_store(store_url)
    t1, t2 = store.run("t1"), store.run("t2")
    assert t1.epochs() == list(range(EPOCHS))
    assert t2.epochs() == [EPOCHS - 2, EPOCHS - 1]
    for epoch in t1.epochs():
        assert_exact(t1.load(epoch), "t1", epoch)
        assert t1.open(epoch).metrics["score"] == float(epoch)
    for epoch in t2.epochs():
        assert_exact(t2.load(epoch), "t2", epoch)
    assert store.verify().ok

    # Quiet now: two more passes leave exactly the blobs that checkpoints reference.
    store.gc(grace_s=0)
    store.gc(grace_s=0)
    needed = set().union(*(run.record(e).digests() for run in (t1, t2) for e in run.epochs()))
    assert set(store.blobs.listing()) == needed
    freed = sum(report.deleted_blobs for report in reports)
    assert freed > 0, "the collector freed the forgotten checkpoints' blobs during the race"
    assert store.verify().ok
