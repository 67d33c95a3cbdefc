"""Loads for evaluators (``--loads``): eager, mmap and partial castore loads against the
mapped and the eager loads of safetensors and torch, each followed by reading every byte
it returned.

The state is saved once with ``codec="raw"`` (the fast-disk codec). Mapped loads read
nothing until a tensor is used, so every case here reads each returned byte (a uint8
``max`` per tensor, inside the timed region) and the times compare what an evaluator
pays to use the weights. Before each attempt, untimed, the files the case reads are read
once (``warm_page_cache``) and, for a case that fills new memory, as much memory as the
state (and a quarter more) is touched and freed (``recycle_memory``): both undo what the
reference VM does to idle memory, so that the times measure the loads. Peak RSS is
measured per case in a fresh interpreter (``rss_probe.py``) as the rise of ``VmHWM`` over
the RSS just before the load, without the read, and shown as a fraction of the checkpoint.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

import castore
from cases.common import Result, best_of, check_equal, tree_bytes
from castore._config import CACHE_DIR_ENV

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from cases.common import BenchState

__all__ = ["PARTIAL_SHARE", "bench_loads"]

RUN = "bench"
PARTIAL_SHARE = 0.10
PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rss_probe.py")
_READ_BLOCK = 4 << 20


def read_every_byte(tree: object) -> object:
    """Touch every byte of every tensor in ``tree`` (a flat dict here); return the tree."""
    assert isinstance(tree, dict)
    for tensor in tree.values():
        if tensor.numel():
            tensor.reshape(-1).view(torch.uint8).max()
    return tree


def warm_page_cache(paths: Sequence[str]) -> None:
    """Read every file at or under ``paths``, so the case finds them in the page cache.

    The reference VM runs DAMON with a ``pageout`` scheme: file pages that look idle for
    a minute are dropped, and sampling every 0.5 s can miss a gigabyte read in 0.05 s
    every 20 s. A case would then read some of its files from disk, at random.
    """
    buffer = bytearray(_READ_BLOCK)
    for path in paths:
        files = [path] if os.path.isfile(path) else glob.glob(f"{path}/**", recursive=True)
        for name in files:
            if os.path.isfile(name):
                with open(name, "rb", buffering=0) as f:
                    while f.readinto(buffer):
                        pass


def recycle_memory(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it, so that the next attempt's allocations
    get pages the hypervisor backs.

    The reference VM's balloon driver reports freed memory to the host (free page
    reporting), which takes it back about a second later; touching such a page again
    costs a fault in the host: up to 1-2 s per GiB there, against 0.1-0.2 s for memory
    freed just before. Without this, every eager load (castore's and the eager peers')
    would pay it or not depending on what the case before it freed, and how long ago.
    The memory is a torch tensor, as the loads allocate, so no allocator is favoured.
    """
    torch.ones(nbytes, dtype=torch.uint8)


def copy_of_torch_mmap(path: str) -> dict[str, torch.Tensor]:
    """``torch.load(mmap=True)``, each tensor then copied into memory."""
    mapped = torch.load(path, mmap=True, weights_only=True)
    return {name: tensor.clone() for name, tensor in mapped.items()}


def partial_patterns(state: BenchState) -> list[str]:
    """Glob patterns selecting the first layers, about ``PARTIAL_SHARE`` of the tensors."""
    layers = max(1, math.ceil(state.layers * PARTIAL_SHARE))
    return [f"layers.{i}.*" for i in range(layers)]


@contextmanager
def cache_dir(path: str) -> Iterator[None]:
    """castore's local cache (and so its mapped files) under ``path`` for the duration."""
    previous = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = path
    try:
        yield
    finally:
        if previous is None:
            del os.environ[CACHE_DIR_ENV]
        else:
            os.environ[CACHE_DIR_ENV] = previous


def peak_rss(url: str, mode: str, nbytes: int) -> float:
    """Peak RSS growth of one load in a fresh interpreter, as a fraction of ``nbytes``."""
    proc = subprocess.run(
        [sys.executable, PROBE, url, mode],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(proc.stdout)["growth"] / nbytes


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    load: Callable[[], object]
    disk_bytes: int
    prepare: Callable[[], None] | None
    rss: str | None
    check: Callable[[object], None]
    note: str
    inputs: tuple[str, ...]
    allocates: bool
    store: castore.Store  # whose transfer counts give the blob bytes read


def bench_loads(state: BenchState, workdir: str, repeat: int) -> list[Result]:
    """Save the state with safetensors, torch and castore raw; time each way to load it."""
    original = state.tensors
    n = state.nbytes
    st_path = os.path.join(workdir, "state.safetensors")
    pt_path = os.path.join(workdir, "state.pt")
    url = os.path.join(workdir, "castore-raw")
    mapped = os.path.join(workdir, "cache", "mmap")
    save_file(original, st_path)
    torch.save(original, pt_path)
    store = castore.open(url, codec=castore.CodecOptions(codec="raw"), progress=False)
    store.run(RUN).save(original, epoch=0)
    run = store.run(RUN)
    hashing = castore.open(url, cache=castore.CacheOptions(remember_verified=False), progress=False)
    hashing_run = hashing.run(RUN)
    size = tree_bytes(url)

    def check(loaded: object) -> None:
        check_equal("load", original, loaded)

    def clear_mapped() -> None:
        shutil.rmtree(mapped, ignore_errors=True)

    def forget_boot() -> None:
        """Remove the verified-this-boot markers, as a reboot makes them stale."""
        for marker in glob.glob(os.path.join(mapped, "*.ok")):
            os.remove(marker)

    cases: list[Case] = []

    def case(
        name: str,
        load: Callable[[], object],
        disk: int,
        *,
        inputs: tuple[str, ...] = (url,),
        allocates: bool = True,
        prepare: Callable[[], None] | None = None,
        rss: str | None = None,
        checker: Callable[[object], None] = check,
        note: str = "",
        through: castore.Store = store,
    ) -> None:
        cases.append(
            Case(name, load, disk, prepare, rss, checker, note, inputs, allocates, through)
        )

    with cache_dir(os.path.join(workdir, "cache")):
        case(
            "safetensors load_file + read",
            lambda: load_file(st_path),
            tree_bytes(st_path),
            inputs=(st_path,),
            allocates=False,
        )
        case(
            "torch.load mmap + read",
            lambda: torch.load(pt_path, mmap=True, weights_only=True),
            tree_bytes(pt_path),
            inputs=(pt_path,),
            allocates=False,
        )
        case(
            "safetensors load_file pread + read",
            lambda: load_file(st_path, backend="pread"),
            tree_bytes(st_path),
            inputs=(st_path,),
        )
        case(
            "torch.load mmap + copy + read",
            lambda: copy_of_torch_mmap(pt_path),
            tree_bytes(pt_path),
            inputs=(pt_path,),
        )
        case(
            "castore raw load + read",
            lambda: run.load(0),
            size,
            rss="eager",
            note="blobs hashed once this boot",
        )
        case(
            "castore raw load, hashing every blob + read",
            lambda: hashing_run.load(0),
            size,
            note="remember_verified=False",
            through=hashing,
        )
        case("castore raw load verify=False + read", lambda: run.load(0, verify=False), size)
        case(
            "castore mmap load, new file + read",
            lambda: run.load(0, mmap=True),
            size,
            prepare=clear_mapped,
            rss="mmap",
            note="file built",
        )
        case(
            "castore mmap load, reused + read",
            lambda: run.load(0, mmap=True),
            size,
            inputs=(mapped,),
            allocates=False,
            rss="mmap",
            note="file verified this boot",
        )
        case(
            "castore mmap load, reused after reboot + read",
            lambda: run.load(0, mmap=True),
            size,
            inputs=(mapped,),
            allocates=False,
            prepare=forget_boot,
            rss="mmap",
            note="file re-hashed",
        )
        case(
            "castore mmap load, reused, verify=False + read",
            lambda: run.load(0, mmap=True, verify=False),
            size,
            inputs=(mapped,),
            allocates=False,
            rss="mmap-noverify",
            note="file mapped as is",
        )
        patterns = partial_patterns(state)
        selected = {
            k: t for k, t in original.items() if k.startswith(tuple(p[:-1] for p in patterns))
        }
        share = sum(t.numel() * t.element_size() for t in selected.values()) / n
        case(
            f"castore partial load ({len(selected)} of {len(original)} tensors) + read",
            lambda: run.load(0, keys=patterns),
            size,
            checker=lambda loaded: check_equal("partial load", selected, loaded),
            note=f"{share:.1%} of the bytes",
        )
        return interleaved(cases, repeat, url, n)


def interleaved(cases: list[Case], repeat: int, url: str, nbytes: int) -> list[Result]:
    """Run every case once per attempt, in order, ``repeat`` times, so that a busy spell
    of a shared machine slows all of them rather than one; then probe peak RSS."""

    def prepare(c: Case) -> None:
        if c.prepare is not None:
            c.prepare()
        warm_page_cache(c.inputs)
        if c.allocates:
            recycle_memory(nbytes + nbytes // 4)

    seconds: dict[str, list[float]] = {c.name: [] for c in cases}
    read: dict[str, int] = dict.fromkeys(seconds, 0)
    for attempt in range(repeat):
        print(f"  attempt {attempt + 1}/{repeat}", file=sys.stderr, flush=True)
        for c in cases:
            before = c.store.transfer_stats()
            seconds[c.name] += best_of(
                1,
                lambda _, c=c: read_every_byte(c.load()),
                check=c.check,
                prepare=lambda _, c=c: prepare(c),
            )
            read[c.name] += (c.store.transfer_stats() - before).bytes_downloaded
    results = []
    for c in cases:
        extra: dict[str, object] = {"blob_bytes_read": read[c.name] // repeat}
        if c.rss is not None:
            if c.prepare is not None:
                c.prepare()
            extra["peak_rss_fraction"] = peak_rss(url, c.rss, nbytes)
        results.append(Result(c.name, "load", seconds[c.name], nbytes, c.disk_bytes, c.note, extra))
    return results
