"""Shared pieces of the benchmark cases: the state dict, timing, checks, sizes, results.

Every case times only the call under test with ``time.perf_counter`` and checks what it
loaded against the originals outside the timed region, so a fast wrong answer fails.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

MiB = 1 << 20
GB = 1e9

__all__ = [
    "GB",
    "BenchState",
    "MiB",
    "Result",
    "aligned",
    "best_of",
    "build_state",
    "check_equal",
    "empty_previous",
    "human_bytes",
    "tree_bytes",
]

_LAYER_TARGET = 16
_EMBEDDING_SHARE = 8


@dataclass(frozen=True, slots=True)
class BenchState:
    """The benchmarked state dict and the transformer shape it was built from."""

    tensors: dict[str, torch.Tensor]
    d_model: int
    layers: int
    vocab: int

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass(slots=True)
class Result:
    """One row of the table: a case's best time over its repeats and what it left on disk.

    ``kind`` is "save" or "load"; it picks the peer times the ratios are taken against.
    """

    case: str
    kind: str
    seconds: list[float]
    logical_bytes: int
    disk_bytes: int
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def gb_per_s(self) -> float:
        return self.logical_bytes / GB / self.best if self.best > 0 else math.inf


def build_state(size_bytes: int, *, seed: int = 0) -> BenchState:
    """A float32 transformer state dict of about ``size_bytes``, the same for one seed.

    About an eighth of it is the token embedding; the rest is layers of attention (fused
    qkv and output projection) and a 4x MLP, each with its biases and two layer norms, so
    the many small vectors a real model has are there too. Values look trained rather
    than freshly initialised: weights ~N(0, 0.02), norm gains near one, small biases.
    """
    params = max(1, size_bytes // 4)
    d = 2 ** max(4, round(math.log2(math.sqrt(params / (12 * _LAYER_TARGET)))))
    vocab = max(64, round(params / _EMBEDDING_SHARE / d / 64) * 64)
    per_layer = 12 * d * d + 13 * d
    layers = max(1, round((params - vocab * d - 2 * d) / per_layer))

    generator = torch.Generator().manual_seed(seed)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).mul_(0.02)

    def gain(n: int) -> torch.Tensor:
        return torch.randn(n, generator=generator).mul_(0.01).add_(1.0)

    def bias(n: int) -> torch.Tensor:
        return torch.randn(n, generator=generator).mul_(0.002)

    tensors: dict[str, torch.Tensor] = {"embed.weight": weight(vocab, d)}
    for i in range(layers):
        p = f"layers.{i}."
        tensors |= {
            p + "ln1.weight": gain(d),
            p + "ln1.bias": bias(d),
            p + "attn.qkv.weight": weight(3 * d, d),
            p + "attn.qkv.bias": bias(3 * d),
            p + "attn.out.weight": weight(d, d),
            p + "attn.out.bias": bias(d),
            p + "ln2.weight": gain(d),
            p + "ln2.bias": bias(d),
            p + "mlp.up.weight": weight(4 * d, d),
            p + "mlp.up.bias": bias(4 * d),
            p + "mlp.down.weight": weight(d, 4 * d),
            p + "mlp.down.bias": bias(d),
        }
    tensors |= {"final_ln.weight": gain(d), "final_ln.bias": bias(d)}
    return BenchState(tensors=tensors, d_model=d, layers=layers, vocab=vocab)


def check_equal(case: str, expected: Mapping[str, torch.Tensor], loaded: object) -> None:
    """Raise unless ``loaded`` holds exactly the expected tensors, bit for bit."""
    if not isinstance(loaded, dict):
        raise AssertionError(f"{case}: loaded a {type(loaded).__name__}, not a dict")
    if set(loaded) != set(expected):
        missing = sorted(set(expected) - set(loaded))[:3]
        extra = sorted(set(loaded) - set(expected))[:3]
        raise AssertionError(f"{case}: keys differ (missing {missing}, unexpected {extra})")
    for name, tensor in expected.items():
        got = loaded[name]
        if not (
            isinstance(got, torch.Tensor)
            and got.dtype == tensor.dtype
            and got.shape == tensor.shape
            and torch.equal(got, tensor)
        ):
            raise AssertionError(f"{case}: tensor {name!r} does not match the original")


def best_of(
    repeat: int,
    run: Callable[[int], object],
    *,
    check: Callable[[object], None] | None = None,
    prepare: Callable[[int], None] | None = None,
) -> list[float]:
    """Time ``run(i)`` ``repeat`` times; check each result untimed and free it before the next.

    ``prepare(i)`` runs untimed before each attempt (a fresh directory, say). Dirty pages
    are flushed before each attempt too, so no case pays for an earlier one's writeback
    (with two cores, background writeback competes for CPU); the page cache stays warm.
    """
    seconds = []
    for i in range(repeat):
        if prepare is not None:
            prepare(i)
        os.sync()
        gc.collect()
        started = time.perf_counter()
        result = run(i)
        seconds.append(time.perf_counter() - started)
        if check is not None:
            check(result)
        del result
    gc.collect()
    return seconds


def empty_previous(paths: Sequence[str], i: int) -> None:
    """Before attempt ``i``, empty every file of attempt ``i - 1`` (a file or a store).

    Each timed save writes somewhere new, as a first save does. Emptying the previous
    attempt's files returns their page cache, so every attempt writes into memory the
    kernel recycles, as removing them would; but the files stay until the scratch folder
    goes at the end. On a journal-less ext4 (this machine's), creating an inode skips
    every inode of its group removed in the last 1-5 minutes (``recently_deleted``), one
    cached-block lookup each: removing a 700-file store before the next attempt made each
    of that attempt's creates cost ~1 ms of kernel CPU instead of ~0.1 ms, a cost of the
    benchmark's own cleanup that a save of one file (torch.save) barely pays.
    """
    if i == 0:
        return
    previous = paths[i - 1]
    if os.path.isfile(previous):
        os.truncate(previous, 0)
        return
    for folder, _, files in os.walk(previous):
        for name in files:
            os.truncate(os.path.join(folder, name), 0)


def tree_bytes(path: str) -> int:
    """Bytes of every file at or under ``path`` (apparent sizes, as ``du -b`` counts)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(folder, name)) for name in files)
    return total


def human_bytes(n: int, digits: int = 2) -> str:
    """``n`` bytes in KiB under a MiB, else in MiB with ``digits`` decimals."""
    if n < MiB:
        return f"{n / 1024:.1f} KiB"
    return f"{n / MiB:.{digits}f} MiB"


def aligned(head: tuple[str, ...], rows: list[tuple[str, ...]], numeric: set[int]) -> str:
    """Columns padded to their widest cell, ``numeric`` ones right-aligned, under a rule."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), rule, *(line(row) for row in rows)])
