"""CheckpointManager under torch.distributed: rank 0 writes, every rank reads."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import castore

WORLD = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, url: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        manager = castore.CheckpointManager(url, "ddp")
        uri = manager.save_agent(model.state_dict(), 0, {"score": 1.0 + rank})
        gathered: list[object] = [None] * WORLD
        dist.all_gather_object(gathered, uri)
        assert gathered == [uri] * WORLD
        loaded = manager.load_agent()
        assert torch.equal(loaded["weight"], model.weight.detach())
        assert manager.run.checkpoints()["score"].tolist() == [1.0]
        manager.save_trainer_state({"lr": torch.tensor(0.1)}, 0, 10)
        assert manager.load_trainer_state()["agent_step"] == 10
        if rank == 0:
            with pytest.raises(castore.ConflictError):
                manager.save_agent(model.state_dict(), 0)
        else:
            with pytest.raises(castore.CastoreError, match=r"rank 0 failed .*: ConflictError"):
                manager.save_agent(model.state_dict(), 0)
    finally:
        dist.destroy_process_group()


def test_rank_zero_writes_and_every_rank_sees_the_result(tmp_path):
    url = str(tmp_path / "store")
    mp.spawn(_worker, args=(_free_port(), url), nprocs=WORLD, join=True)
    run = castore.open(url).run("ddp")
    assert run.epochs() == [0]
    assert run.store.run("ddp.trainer").epochs() == [0]
