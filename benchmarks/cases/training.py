"""Every checkpoint of a training run saved twice: by castore and by torch.save.

The storage benchmark hands each checkpoint's state to a ``SideBySide``, which saves it
into a castore run (a local directory store, default options) and into a new
``torch.save`` file, timing each call alone, so both pay for exactly the same states.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import castore
from cases.common import tree_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["Checkpoint", "RunResult", "SideBySide", "check_identical", "warm_up"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One checkpoint's row: what each side stored and how long its save call took."""

    epoch: int
    castore_bytes: int
    torch_bytes: int
    castore_s: float
    torch_s: float
    metric: str


@dataclass(frozen=True, slots=True)
class RunResult:
    """A whole run: its rows, what castore left on disk and the target it is held to.

    ``castore_bytes`` totals are ``SaveInfo.stored_bytes`` summed; ``blobs_bytes`` is the
    store's ``blobs/`` directory on disk at the end (they should agree) and
    ``store_bytes`` the whole store, manifest parts and ``castore.json`` included.
    """

    name: str
    title: str
    target: float
    tensors: int
    logical_bytes: int
    rows: Sequence[Checkpoint]
    blobs_bytes: int
    store_bytes: int

    @property
    def castore_bytes(self) -> int:
        return sum(r.castore_bytes for r in self.rows)

    @property
    def torch_bytes(self) -> int:
        return sum(r.torch_bytes for r in self.rows)

    @property
    def bytes_ratio(self) -> float:
        return self.castore_bytes / self.torch_bytes

    @property
    def time_ratio(self) -> float:
        return sum(r.castore_s for r in self.rows) / sum(r.torch_s for r in self.rows)

    @property
    def first_time_ratio(self) -> float:
        return self.rows[0].castore_s / self.rows[0].torch_s

    @property
    def later_time_ratio(self) -> float:
        """castore over torch.save time of every checkpoint after the first (full) one."""
        later = self.rows[1:]
        return sum(r.castore_s for r in later) / sum(r.torch_s for r in later)

    @property
    def later_bytes_ratio(self) -> float:
        later = self.rows[1:]
        return sum(r.castore_bytes for r in later) / sum(r.torch_bytes for r in later)


class SideBySide:
    """Saves one run's checkpoints with castore and with torch.save under ``workdir``.

    Dirty pages are flushed (untimed) before every timed call, so neither side pays for
    the other's writeback; castore saves first, so it never finds the state's pages
    warmer than torch.save does.
    """

    def __init__(
        self,
        name: str,
        title: str,
        target: float,
        workdir: str,
        store_dir: str | None = None,
    ) -> None:
        """``store_dir``: a store another run already uses (a fine-tune saving beside its
        pre-training run); its bytes before the first save are not counted as this run's."""
        self.name = name
        self.title = title
        self.target = target
        self.root = os.path.join(workdir, name)
        self.store_dir = store_dir or os.path.join(self.root, "castore")
        self.torch_dir = os.path.join(self.root, "torch")
        os.makedirs(self.torch_dir)
        self.bytes_before = (
            tree_bytes(os.path.join(self.store_dir, "blobs")),
            tree_bytes(self.store_dir),
        )
        self.run = castore.open(self.store_dir, progress=False).run(name)
        self.rows: list[Checkpoint] = []
        self.first: castore.SaveInfo | None = None
        self.tensors = 0

    def save(self, epoch: int, state: object, metric: str) -> None:
        os.sync()
        started = time.perf_counter()
        info = self.run.save(state, epoch=epoch)
        castore_s = time.perf_counter() - started

        path = os.path.join(self.torch_dir, f"epoch-{epoch:04d}.pt")
        os.sync()
        started = time.perf_counter()
        torch.save(state, path)
        torch_s = time.perf_counter() - started

        if self.first is None:
            self.first = info
            self.tensors = len(self.run.open(epoch).keys())
        self.rows.append(
            Checkpoint(epoch, info.stored_bytes, os.path.getsize(path), castore_s, torch_s, metric)
        )

    def finish(self, state: object, *, keep_store: bool = False) -> RunResult:
        """Check that a fresh store loads the last state bit for bit, measure, clean up
        (all but the store, with ``keep_store``: another run saves into it next)."""
        if self.first is None:
            raise AssertionError(f"{self.name}: no checkpoint was saved")
        loaded = castore.open(self.store_dir, progress=False).run(self.name).load()
        check_identical(f"{self.name} epoch {self.rows[-1].epoch}", state, loaded)
        result = RunResult(
            name=self.name,
            title=self.title,
            target=self.target,
            tensors=self.tensors,
            logical_bytes=self.first.logical_bytes,
            rows=tuple(self.rows),
            blobs_bytes=tree_bytes(os.path.join(self.store_dir, "blobs")) - self.bytes_before[0],
            store_bytes=tree_bytes(self.store_dir) - self.bytes_before[1],
        )
        shutil.rmtree(self.torch_dir)
        if not keep_store:
            shutil.rmtree(self.root)  # its own store lies under it; a shared one is the owner's
        return result


def warm_up(workdir: str) -> tuple[float, float]:
    """Each side's first save in this process, of a tiny state: castore's and torch.save's
    seconds. It pays one-off costs (lazy imports, thread start-up) that would otherwise
    land on the first checkpoint of the first run and hide what a full save costs.
    """
    folder = os.path.join(workdir, "warm-up")
    os.makedirs(folder)
    state = {"warm-up": torch.zeros(16)}
    started = time.perf_counter()
    castore.open(os.path.join(folder, "castore"), progress=False).run("w").save(state, epoch=0)
    castore_s = time.perf_counter() - started
    started = time.perf_counter()
    torch.save(state, os.path.join(folder, "warm-up.pt"))
    torch_s = time.perf_counter() - started
    shutil.rmtree(folder)
    return castore_s, torch_s


def check_identical(where: str, expected: object, loaded: object) -> None:
    """Raise unless ``loaded`` has the structure and plain values of ``expected`` and
    every tensor's bytes, dtype and shape (bit for bit, so -0.0 and NaN payloads count).
    """
    if isinstance(expected, torch.Tensor):
        if not (
            isinstance(loaded, torch.Tensor)
            and loaded.dtype == expected.dtype
            and loaded.shape == expected.shape
            and torch.equal(_bits(loaded), _bits(expected))
        ):
            raise AssertionError(f"{where}: tensor differs from the one saved")
    elif isinstance(expected, dict):
        if not isinstance(loaded, dict) or list(loaded) != list(expected):
            raise AssertionError(f"{where}: keys differ from the dict saved")
        for key, value in expected.items():
            check_identical(f"{where}.{key}", value, loaded[key])
    elif isinstance(expected, list | tuple):
        if type(loaded) is not type(expected) or len(loaded) != len(expected):
            raise AssertionError(f"{where}: {type(loaded).__name__} differs from the one saved")
        for i, (value, got) in enumerate(zip(expected, loaded, strict=True)):
            check_identical(f"{where}[{i}]", value, got)
    elif type(loaded) is not type(expected) or loaded != expected:
        raise AssertionError(f"{where}: {loaded!r} != {expected!r}")


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)
