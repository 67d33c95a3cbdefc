"""castore on a local directory store: full saves per codec, an unchanged re-save, loads,
and an asynchronous save of a partly changed state.

Every timed full save goes to a fresh store, so dedup against an earlier repeat cannot
flatter it; the re-save commits the unchanged state as the next epoch of a store that
already has it, which is the common case of a training loop saving a frozen part. The
asynchronous case is a fine-tuning loop's: a quarter of the bytes changed since the
previous save, and what the loop waits for is the time until ``save`` returns.
"""

from __future__ import annotations

import gc
import os
import time
from typing import TYPE_CHECKING, Literal

import torch

import castore
from cases.common import (
    Result,
    best_of,
    check_equal,
    empty_previous,
    human_bytes,
    tree_bytes,
)

if TYPE_CHECKING:
    from cases.common import BenchState

__all__ = ["Codec", "bench_castore", "bench_castore_async"]

RUN = "bench"

Codec = Literal["auto", "raw", "zstd"]


def _open(url: str, codec: Codec) -> castore.Store:
    return castore.open(url, codec=castore.CodecOptions(codec=codec), progress=False)


def _check_full_save(case: str, state: BenchState, info: object) -> None:
    if not isinstance(info, castore.SaveInfo):
        raise AssertionError(f"{case}: save returned {type(info).__name__}, not SaveInfo")
    if info.logical_bytes != state.nbytes or info.new_bytes != state.nbytes:
        raise AssertionError(
            f"{case}: logical {info.logical_bytes} / new {info.new_bytes} bytes, "
            f"expected {state.nbytes} for both"
        )


def _check_resave(case: str, info: object) -> None:
    if not isinstance(info, castore.SaveInfo):
        raise AssertionError(f"{case}: save returned {type(info).__name__}, not SaveInfo")
    if info.blobs_written or info.new_bytes or info.stored_bytes:
        raise AssertionError(
            f"{case}: an unchanged re-save wrote {info.blobs_written} blobs "
            f"({info.new_bytes} new bytes); it should write none"
        )


def bench_castore(
    state: BenchState,
    workdir: str,
    repeat: int,
    codec: Codec,
    *,
    resave: bool,
    cold: bool,
    unverified: bool = False,
) -> list[Result]:
    """Save ``state`` ``repeat`` times into fresh stores, then load it back from the last.

    ``resave`` adds the unchanged re-save case, ``cold`` the load through a newly opened
    store (nothing of the manifest cached in the process; the page cache stays warm),
    ``unverified`` the load with ``verify=False``, which skips the BLAKE3 check.
    """
    original = state.tensors
    label = f"castore {codec}"
    urls = [os.path.join(workdir, f"castore-{codec}-{i}") for i in range(repeat)]
    infos: list[castore.SaveInfo] = []

    def save(i: int) -> castore.SaveInfo:
        info = _open(urls[i], codec).run(RUN).save(original, epoch=0)
        infos.append(info)
        return info

    saves = best_of(
        repeat,
        save,
        prepare=lambda i: empty_previous(urls, i),
        check=lambda info: _check_full_save(label, state, info),
    )
    url = urls[-1]
    size = tree_bytes(url)
    info = infos[-1]
    results = [
        Result(
            f"{label} save",
            "save",
            saves,
            state.nbytes,
            size,
            note=f"{info.blobs_written} blobs",
            extra={"stored_bytes": info.stored_bytes, "blobs_written": info.blobs_written},
        )
    ]

    store = _open(url, codec)
    if resave:
        before = tree_bytes(url)
        resaves = best_of(
            repeat,
            lambda i: store.run(RUN).save(original, epoch=1 + i),
            check=lambda info: _check_resave(f"{label} re-save", info),
        )
        added = (tree_bytes(url) - before) // repeat
        results.append(
            Result(
                f"{label} re-save unchanged",
                "save",
                resaves,
                state.nbytes,
                added,
                note="0 blobs written",
            )
        )

    def check(loaded: object) -> None:
        check_equal(f"{label} load", original, loaded)

    loads = best_of(repeat, lambda _: store.run(RUN).load(0), check=check)
    results.append(
        Result(f"{label} load", "load", loads, state.nbytes, size, "blobs hashed once this boot")
    )
    if unverified:
        fast = best_of(repeat, lambda _: store.run(RUN).load(0, verify=False), check=check)
        results.append(
            Result(f"{label} load verify=False", "load", fast, state.nbytes, size, "no BLAKE3")
        )
    if cold:
        colds = best_of(repeat, lambda _: _open(url, codec).run(RUN).load(0), check=check)
        results.append(
            Result(
                f"{label} cold load",
                "load",
                colds,
                state.nbytes,
                size,
                note="new Store each time",
            )
        )
    return results


def bench_castore_async(state: BenchState, workdir: str, repeat: int) -> list[Result]:
    """``run.save(blocking=False)`` after a quarter of the bytes changed in place: the time
    until it returns (the training loop's wait) and until the save is committed.

    The state is a copy (the other cases keep theirs). Its last tensors, about a quarter
    of the bytes (the top layers and the final norm, as a fine-tune trains them), get a
    small in-place update before each attempt; the first, full save is untimed.
    """
    tensors = {name: tensor.clone() for name, tensor in state.tensors.items()}
    changed: list[torch.Tensor] = []
    for tensor in reversed(list(tensors.values())):
        if sum(t.nbytes for t in changed) >= state.nbytes // 4:
            break
        changed.append(tensor)
    changed_bytes = sum(t.nbytes for t in changed)
    url = os.path.join(workdir, "castore-async")
    run = _open(url, "auto").run(RUN)
    run.save(tensors, epoch=0)
    returned: list[float] = []
    committed: list[float] = []
    stored = 0
    for i in range(repeat):
        with torch.no_grad():
            for tensor in changed:
                tensor.mul_(1.0 + 1e-3)
        os.sync()
        gc.collect()
        started = time.perf_counter()
        handle = run.save(tensors, epoch=1 + i, blocking=False)
        returned.append(time.perf_counter() - started)
        info = handle.result()
        committed.append(time.perf_counter() - started)
        stored = info.stored_bytes
        if not changed_bytes <= info.new_bytes < state.nbytes // 2:
            raise AssertionError(
                f"castore async save: {info.new_bytes} new bytes where {changed_bytes} changed"
            )
    check_equal("castore async save", tensors, run.load(repeat))
    label = "castore auto async save, 1/4 changed"
    note = f"{human_bytes(changed_bytes, 0)} changed"
    return [
        Result(f"{label}: returns", "save", returned, state.nbytes, stored, note=note),
        Result(f"{label}: committed", "save", committed, state.nbytes, stored, note=note),
    ]
