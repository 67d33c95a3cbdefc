"""Distributed checkpoints of a sharded model: castore.dcp against DCP's own writers.

    python benchmarks/dcp.py [--quick | --smoke] [--epochs N] [--world W] [--dir DIR]

Trains a small transformer-shaped model sharded with FSDP2 over W CPU processes (gloo
on 127.0.0.1, default 2) for N epochs (default 5). After each epoch the same sharded
state (model and AdamW state) is saved and loaded back with ``torch.distributed.
checkpoint`` three ways: castore's StorageWriter/StorageReader into one local store,
``FileSystemWriter``/``FileSystemReader`` and ``FsspecWriter``/``FsspecReader`` into a new
local directory per epoch. Prints per-epoch save and load times, bytes stored, and
castore's ratios against each peer. Every load is checked against the live state.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint.state_dict import get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import castore
from cases.common import aligned, human_bytes, tree_bytes
from castore.dcp import StorageReader, StorageWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

SIDES = ("castore", "FileSystem", "Fsspec")
RUN = "bench"


@dataclass(frozen=True, slots=True)
class Preset:
    d_model: int
    layers: int
    vocab: int
    steps: int
    batch: int
    context: int


PRESETS = {
    "full": Preset(d_model=512, layers=8, vocab=8192, steps=4, batch=8, context=64),
    "quick": Preset(d_model=256, layers=4, vocab=4096, steps=2, batch=8, context=32),
    "smoke": Preset(d_model=32, layers=2, vocab=128, steps=1, batch=2, context=8),
}


class Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class Net(torch.nn.Module):
    """Token embedding, pre-norm MLP blocks, final norm and an untied head."""

    def __init__(self, p: Preset) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(p.vocab, p.d_model)
        self.blocks = torch.nn.ModuleList(Block(p.d_model) for _ in range(p.layers))
        self.norm = torch.nn.LayerNorm(p.d_model)
        self.head = torch.nn.Linear(p.d_model, p.vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every position, flattened to (batch * context, vocab)."""
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).flatten(0, 1))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke")
    parser.add_argument("--epochs", type=int, default=5, help="checkpoints (default 5)")
    parser.add_argument("--world", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--codec", choices=("auto", "zstd", "raw"), default="auto", help="castore's codec"
    )
    parser.add_argument("--dir", help="parent of the scratch directory (default: system temp)")
    parser.set_defaults(mode="full")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.mode]
    load_before = os.getloadavg()[0]
    print(
        f"castore {castore.__version__} DCP benchmark ({args.mode}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}\n"
        f"model: {args.world} processes (gloo, FSDP2 on a CPU mesh), d_model {preset.d_model}, "
        f"{preset.layers} MLP blocks, vocab {preset.vocab}; AdamW, {preset.steps} steps per "
        f"epoch; {args.epochs} epochs; castore codec {args.codec!r}\n"
        "each epoch: dcp.save then dcp.load of model + optimizer state with each writer "
        "(after an untimed save and load of the untrained state each); "
        "times are the slowest rank's, after an untimed os.sync() and barrier; peers write "
        "a new directory per epoch with sync_files=False (no fsync, as castore)\n"
        "ratios: castore / peer, so < 1 means castore is faster or stores fewer bytes",
        flush=True,
    )
    workdir = tempfile.mkdtemp(prefix="castore-dcp-", dir=args.dir)
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.spawn(
            rank_main,
            args=(args.world, port, preset, args.epochs, castore.CodecOptions(args.codec), workdir),
            nprocs=args.world,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return 0


def rank_main(
    rank: int,
    world: int,
    port: int,
    preset: Preset,
    epochs: int,
    codec: castore.CodecOptions,
    workdir: str,
) -> None:
    """One rank: train, and after each epoch save and load with every side."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = Net(preset)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    model_state, optim_state = get_state_dict(model, optimizer)
    warm_up({"model": model_state, "optim": optim_state}, os.path.join(workdir, "warm-up"), codec)
    rows = []
    for epoch in range(epochs):
        loss = train(model, optimizer, preset, epoch)
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state}
        row: dict[str, float] = {"epoch": epoch, "loss": loss}
        for side in SIDES:
            before = side_bytes(workdir, side, epoch) if rank == 0 else 0
            row[f"{side} save"] = timed(partial(save, side, state, workdir, epoch, loss, codec))
            row[f"{side} bytes"] = side_bytes(workdir, side, epoch) - before if rank == 0 else 0
            target = zeros_like(state)
            row[f"{side} load"] = timed(partial(load, side, target, workdir, epoch))
            check_equal(side, state, target)
        rows.append(row)
    if rank == 0:
        print_tables(rows)
    dist.destroy_process_group()
    leave_without_teardown()


def leave_without_teardown() -> None:
    """End a finished rank at once. The device mesh keeps the gloo process group alive
    into interpreter shutdown, where a gloo worker thread destroying its last allreduce
    work must take the GIL and is torn down instead: std::terminate, SIGABRT (seen in
    about one run in ten; backtrace through ProcessGroupGloo::runLoop ->
    ~AsyncAllreduceWork -> decref_pyobject -> take_gil -> PyThread_exit_thread)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def warm_up(state: dict, workdir: str, codec: castore.CodecOptions) -> None:
    """Save and load the untrained state once per side, untimed, into a scratch folder:
    lazy imports, thread pools and DCP's first DTensor paths start here, not in epoch 0."""
    for side in SIDES:
        save(side, state, workdir, 0, 0.0, codec)
        load(side, zeros_like(state), workdir, 0)
    shutil.rmtree(workdir, ignore_errors=True)


def save(
    side: str, state: dict, workdir: str, epoch: int, loss: float, codec: castore.CodecOptions
) -> None:
    """``dcp.save`` with ``side``'s writer, made here: opening castore's store is timed."""
    if side == "castore":
        writer: dcp.StorageWriter = StorageWriter(
            side_path(workdir, side, epoch), RUN, epoch, metrics={"loss": loss}, codec=codec
        )
    elif side == "FileSystem":
        writer = dcp.FileSystemWriter(side_path(workdir, side, epoch), sync_files=False)
    else:
        writer = FsspecWriter(side_path(workdir, side, epoch), sync_files=False)
    dcp.save(state, storage_writer=writer)


def load(side: str, target: dict, workdir: str, epoch: int) -> None:
    """``dcp.load`` into ``target`` with ``side``'s reader."""
    if side == "castore":
        reader: dcp.StorageReader = StorageReader(side_path(workdir, side, epoch), RUN, epoch)
    elif side == "FileSystem":
        reader = dcp.FileSystemReader(side_path(workdir, side, epoch))
    else:
        reader = FsspecReader(side_path(workdir, side, epoch))
    dcp.load(target, storage_reader=reader)


def train(model: Net, optimizer: torch.optim.Optimizer, p: Preset, epoch: int) -> float:
    """``p.steps`` AdamW steps on seeded random tokens whose targets are a fixed function
    of them, so the loss falls (the same batches on every rank)."""
    loss = torch.zeros(())
    for step in range(p.steps):
        generator = torch.Generator().manual_seed(epoch * 1000 + step)
        tokens = torch.randint(p.vocab, (p.batch, p.context), generator=generator)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits, (tokens.flatten() * 31 + 7) % p.vocab)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return float(loss.detach())


def timed(call: Callable[[], object]) -> float:
    """Seconds ``call`` took on the slowest rank; dirty pages are flushed first."""
    os.sync()
    dist.barrier()
    started = time.perf_counter()
    call()
    elapsed = torch.tensor(time.perf_counter() - started, dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def side_path(workdir: str, side: str, epoch: int) -> str:
    """The castore store (one for all epochs), or the peer's new directory of ``epoch``."""
    if side == "castore":
        return os.path.join(workdir, "castore")
    return os.path.join(workdir, side.lower(), str(epoch))


def side_bytes(workdir: str, side: str, epoch: int) -> int:
    """Bytes on disk under ``side_path``: apparent sizes, as ``du -b`` counts."""
    path = side_path(workdir, side, epoch)
    return tree_bytes(path) if os.path.exists(path) else 0


def zeros_like(tree: object) -> object:
    if isinstance(tree, dict):
        return {key: zeros_like(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [zeros_like(value) for value in tree]
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return tree


def check_equal(side: str, expected: object, got: object, where: str = "") -> None:
    """Raise unless every local shard and plain value loaded equals the live state."""
    if isinstance(expected, dict):
        for key, value in expected.items():
            check_equal(side, value, got[key], f"{where}.{key}")  # type: ignore[index]
    elif isinstance(expected, list):
        for i, value in enumerate(expected):
            check_equal(side, value, got[i], f"{where}.{i}")  # type: ignore[index]
    elif isinstance(expected, torch.Tensor):
        a = expected.to_local() if isinstance(expected, DTensor) else expected
        b = got.to_local() if isinstance(got, DTensor) else got
        if not torch.equal(a, b):  # type: ignore[arg-type]
            raise AssertionError(f"{side}: {where} loaded wrong values")
    elif expected != got:
        raise AssertionError(f"{side}: {where} loaded {got!r}, saved {expected!r}")


def print_tables(rows: list[dict[str, float]]) -> None:
    """Saves with bytes, then loads, one row per epoch and a total, with ratios."""
    total = {key: sum(row[key] for row in rows) for key in rows[0] if key != "epoch"}
    save_head = ("epoch", *(f"{s} s" for s in SIDES), "x FileSystem", "x Fsspec")
    save_head += (*(f"{s} stored" for s in SIDES), "x bytes")
    numeric = set(range(len(save_head)))

    def save_row(label: str, row: dict[str, float]) -> tuple[str, ...]:
        return (
            label,
            *(f"{row[f'{s} save']:.3f}" for s in SIDES),
            f"{row['castore save'] / row['FileSystem save']:.2f}",
            f"{row['castore save'] / row['Fsspec save']:.2f}",
            *(human_bytes(int(row[f"{s} bytes"])) for s in SIDES),
            f"{row['castore bytes'] / row['FileSystem bytes']:.3f}",
        )

    def load_row(label: str, row: dict[str, float]) -> tuple[str, ...]:
        return (
            label,
            *(f"{row[f'{s} load']:.3f}" for s in SIDES),
            f"{row['castore load'] / row['FileSystem load']:.2f}",
            f"{row['castore load'] / row['Fsspec load']:.2f}",
        )

    saves = [save_row(str(int(row["epoch"])), row) for row in rows] + [save_row("total", total)]
    loads = [load_row(str(int(row["epoch"])), row) for row in rows] + [load_row("total", total)]
    print("\nsave (dcp.save); stored = bytes the save added on disk")
    print(aligned(save_head, saves, numeric))
    load_head = ("epoch", *(f"{s} s" for s in SIDES), "x FileSystem", "x Fsspec")
    print("\nload (dcp.load into zeroed sharded tensors)")
    print(aligned(load_head, loads, set(range(len(load_head)))))
    print("\ntraining loss by epoch: " + ", ".join(f"{row['loss']:.3f}" for row in rows))


if __name__ == "__main__":
    sys.exit(main())
