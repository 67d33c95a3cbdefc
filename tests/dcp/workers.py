"""Rank processes for the DCP tests: gloo on 127.0.0.1, an FSDP2 model on a CPU mesh.

Each rank builds the same seeded model, shards it with ``fully_shard`` over a 1-D mesh of
the world size, and adds a column-sharded DTensor (uneven at 4 ranks) and plain values,
so saves hold dim-0 shards, dim-1 shards, replicated tensors (Adam's ``step``) and
non-tensor items. The expected full tensors go to ``oracle-<epoch>.pt`` beside the store.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from castore.dcp import StorageReader, StorageWriter

RUN = "fsdp"


def spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, port, *args)`` on ``world`` processes; raise if any fails.

    Ranks are forked from a forkserver that has imported this module once, so each
    world starts in a fraction of a second instead of importing torch per process (the
    server itself never runs torch code, so forking it is safe).
    """
    multiprocessing.set_forkserver_preload([__name__])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(
        fn, args=(world, port, *args), nprocs=world, join=True, start_method="forkserver"
    )


def _leave() -> None:
    """End a rank that passed without interpreter teardown: the device mesh keeps the
    gloo process group alive into shutdown, where a gloo worker thread freeing its last
    allreduce work may need the GIL and abort the process (SIGABRT, about one run in ten;
    see benchmarks/dcp.py, leave_without_teardown)."""
    dist.destroy_process_group()
    os._exit(0)


def _init(rank: int, world: int, port: int):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    return init_device_mesh("cpu", (world,))


def _model(mesh, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> float:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, 16, generator=generator)
    loss = model(x).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.detach())


def _state(model, optimizer, mesh, extra: torch.Tensor, step: int) -> dict:
    model_state, optim_state = get_state_dict(model, optimizer)
    return {
        "model": model_state,
        "optim": optim_state,
        "extra": distribute_tensor(extra, mesh, [Shard(1)]),
        "meta": {"note": "dcp test", "step": step},
    }


def _full(tree):
    """The tree with every DTensor gathered (a collective: every rank calls it)."""
    if isinstance(tree, dict):
        return {key: _full(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_full(value) for value in tree]
    if isinstance(tree, DTensor):
        return tree.full_tensor()
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    return tree


def _oracle(directory: str, epoch: int, state: dict, rank: int) -> None:
    full = _full(state)
    if rank == 0:
        torch.save(full, Path(directory, f"oracle-{epoch}.pt"))


def assert_same(expected, got, where: str = "") -> None:
    """Equal trees: same keys, tensors bit for bit, plain values equal."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), (where, sorted(got), sorted(expected))
        for key in expected:
            assert_same(expected[key], got[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(expected, got, strict=True)):
            assert_same(a, b, f"{where}.{i}")
    elif isinstance(expected, torch.Tensor):
        got = got.full_tensor() if isinstance(got, DTensor) else got
        assert got.dtype == expected.dtype, where
        assert torch.equal(got, expected), where
    else:
        assert got == expected, where


class _FailingWriter(StorageWriter):
    """Stores this rank's blobs, then fails before the coordinator can commit."""

    def __init__(self, *args, exit_process: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exit_process = exit_process

    def write_data(self, plan, planner):
        super().write_data(plan, planner)
        if self.exit_process:
            os._exit(3)
        raise RuntimeError("injected failure after writing blobs")


def save_world(rank: int, world: int, port: int, url: str, directory: str) -> None:
    """Epoch 0; epoch 1 unchanged (no new blob); epoch 2 fails on rank 1 (nothing
    committed); one training step, then epoch 3 with async_save."""
    mesh = _init(rank, world, port)
    model, optimizer = _model(mesh, seed=0)
    loss = _train(model, optimizer, step=0)
    extra = torch.arange(60, dtype=torch.float64).reshape(6, 10)
    state = _state(model, optimizer, mesh, extra, step=1)
    _oracle(directory, 0, state, rank)

    dcp.save(state, storage_writer=StorageWriter(url, RUN, 0, step=1, metrics={"loss": loss}))
    dcp.save(state, storage_writer=StorageWriter(url, RUN, 1, step=1, metrics={"loss": loss}))
    run = StorageReader(url, RUN, 1).run
    record = run.record(1)
    assert (record.parent_epoch, record.new_blobs, record.new_bytes) == (0, 0, 0), record
    assert run.record(0).new_blobs > 0

    writer_type = _FailingWriter if rank == 1 else StorageWriter
    failed = None
    try:
        dcp.save(state, storage_writer=writer_type(url, RUN, 2))
    except dcp.api.CheckpointException as exc:
        failed = str(exc)
    assert failed is not None, "the save with a failing rank did not fail"
    assert "injected failure" in failed, failed
    assert run.epochs() == [0, 1]

    loss = _train(model, optimizer, step=1)
    state = _state(model, optimizer, mesh, extra * 2, step=2)
    _oracle(directory, 3, state, rank)
    writer = StorageWriter(url, RUN, 3, step=2, metrics={"loss": loss})
    dcp.async_save(state, storage_writer=writer).result()
    dist.barrier()
    record = run.record(3)
    assert record.parent_epoch == 1, record
    assert record.new_blobs > 0, record
    assert any(chunk.base for ref in record.tensors for chunk in ref.chunks), "no delta frame"
    _leave()


def load_world(rank: int, world: int, port: int, url: str, directory: str) -> None:
    """Load epochs 1 and 3 (saved by 2 ranks) into a 4-rank model, then save epoch 4."""
    mesh = _init(rank, world, port)
    model, optimizer = _model(mesh, seed=1)
    for epoch, oracle, step in ((1, 0, 1), (3, 3, 2)):
        state = _state(model, optimizer, mesh, torch.zeros(6, 10, dtype=torch.float64), step=0)
        dcp.load(state, storage_reader=StorageReader(url, RUN, epoch))
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
        )
        expected = torch.load(Path(directory, f"oracle-{oracle}.pt"), weights_only=True)
        assert state["meta"] == {"note": "dcp test", "step": step}
        got = _full(_state(model, optimizer, mesh, torch.zeros(6, 10), step=0))
        assert_same(expected["model"], got["model"], "model")
        assert_same(expected["optim"], got["optim"], "optim")
        assert_same(expected["extra"], _full(state["extra"]), "extra")

    state = _state(model, optimizer, mesh, torch.ones(6, 10, dtype=torch.float64), step=3)
    _oracle(directory, 4, state, rank)
    dcp.save(state, storage_writer=StorageWriter(url, RUN, 4, step=3, metrics={"loss": 0.0}))
    _leave()


def crash_world(rank: int, world: int, port: int, url: str) -> None:
    """Rank 1's process dies after writing its blobs, before the commit."""
    mesh = _init(rank, world, port)
    model, optimizer = _model(mesh, seed=0)
    _train(model, optimizer, step=0)
    state = _state(model, optimizer, mesh, torch.zeros(6, 10), step=0)
    writer_type = _FailingWriter if rank == 1 else StorageWriter
    kwargs = {"exit_process": True} if rank == 1 else {}
    dcp.save(state, storage_writer=writer_type(url, RUN, 0, **kwargs))
