"""castore on a local directory store: full saves per codec, an unchanged re-save, loads.

Every timed full save goes to a fresh store, so dedup against an earlier repeat cannot
flatter it; the re-save commits the unchanged state as the next epoch of a store that
already has it, which is the common case of a training loop saving a frozen part.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal

import castore
from cases.common import Result, best_of, check_equal, empty_previous, tree_bytes

if TYPE_CHECKING:
    from cases.common import BenchState

__all__ = ["Codec", "bench_castore"]

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
