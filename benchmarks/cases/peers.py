"""The peers castore is measured against: torch.save/torch.load and safetensors.

Each writes one file, as a user of that library would, and reads it back whole.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from cases.common import Result, best_of, check_equal, empty_previous, tree_bytes

if TYPE_CHECKING:
    from cases.common import BenchState

__all__ = ["bench_safetensors", "bench_torch"]


def bench_torch(state: BenchState, workdir: str, repeat: int) -> list[Result]:
    """torch.save to a file, then torch.load, and torch.load(mmap=True) copying every tensor.

    The mmap case copies each tensor into memory so it pays for reading every byte, as
    the other loads do; mapping alone reads nothing.
    """
    paths = [os.path.join(workdir, f"state-{i}.pt") for i in range(repeat)]
    original = state.tensors
    saves = best_of(
        repeat,
        lambda i: torch.save(original, paths[i]),
        prepare=lambda i: empty_previous(paths, i),
    )
    path = paths[-1]
    size = tree_bytes(path)

    def check(loaded: object) -> None:
        check_equal("torch.load", original, loaded)

    loads = best_of(repeat, lambda _: torch.load(path, weights_only=True), check=check)

    def load_mmap(_: int) -> dict[str, torch.Tensor]:
        mapped = torch.load(path, mmap=True, weights_only=True)
        return {name: tensor.clone() for name, tensor in mapped.items()}

    mmaps = best_of(repeat, load_mmap, check=check)
    return [
        Result("torch.save", "save", saves, state.nbytes, size),
        Result("torch.load", "load", loads, state.nbytes, size),
        Result("torch.load mmap + copy", "load", mmaps, state.nbytes, size),
    ]


def bench_safetensors(state: BenchState, workdir: str, repeat: int) -> list[Result]:
    """safetensors.torch save_file to a file, then load_file with each backend.

    The default backend maps the file and returns tensors over the mapping, so its time
    covers no reading at all; the ``pread`` backend reads every byte into memory.
    """
    paths = [os.path.join(workdir, f"state-{i}.safetensors") for i in range(repeat)]
    original = state.tensors
    saves = best_of(
        repeat,
        lambda i: save_file(original, paths[i]),
        prepare=lambda i: empty_previous(paths, i),
    )
    path = paths[-1]
    size = tree_bytes(path)

    def check(loaded: object) -> None:
        check_equal("safetensors load_file", original, loaded)

    loads = best_of(repeat, lambda _: load_file(path), check=check)
    preads = best_of(repeat, lambda _: load_file(path, backend="pread"), check=check)
    return [
        Result("safetensors save_file", "save", saves, state.nbytes, size),
        Result("safetensors load_file", "load", loads, state.nbytes, size, note="mmap, lazy"),
        Result("safetensors load_file pread", "load", preads, state.nbytes, size),
    ]
