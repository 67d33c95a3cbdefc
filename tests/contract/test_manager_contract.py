"""CheckpointManager, checkpoint URIs and import on every backend."""

from __future__ import annotations

import pytest
import torch
import yaml

import castore


class Agent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 2)
        self.calls = 0


def manager_for(backend, run="ppo", **options):
    return castore.CheckpointManager(backend.url, run, **options, **backend.storage_options)


def test_save_find_and_load_through_uris(backend):
    manager = manager_for(backend, keep_last=2, keep_best=1)
    agent = Agent()
    uris = []
    for epoch, score in enumerate([0.3, 0.9, 0.1, 0.2]):
        with torch.no_grad():
            agent.head.bias.fill_(float(epoch))
        agent.calls = epoch
        uris.append(manager.save_agent(agent, epoch, {"score": score, "agent_step": 10 * epoch}))
    assert uris[0].startswith("castore+")
    assert uris[3].endswith("#ppo@3")
    assert manager.run.epochs() == [1, 2, 3]
    assert manager.find_best_checkpoint() == uris[1]
    assert manager.select("latest", 2) == [uris[3], uris[2]]

    with pytest.raises(castore.UnsafeLoadError):
        castore.load(uris[1], **backend.storage_options)
    best = castore.load(uris[1], trust=True, **backend.storage_options)["agent"]
    assert type(best) is Agent
    assert best.calls == 1
    assert torch.equal(best.head.bias, torch.ones(2))
    latest = manager_for(backend, trust=True).load_agent()
    assert latest.calls == 3
    assert torch.equal(latest.body.weight, agent.body.weight)
    weights = castore.load(uris[2], keys="agent.head.*", **backend.storage_options)
    assert torch.equal(weights["agent"]["head.bias"], torch.full((2,), 2.0))


def test_trainer_state_round_trip(backend):
    manager = manager_for(backend)
    model = torch.nn.Linear(3, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    manager.save_trainer_state(optimizer, 4, 400)
    manager.save_trainer_state(optimizer, 5, 500)
    state = manager_for(backend).load_trainer_state()
    assert (state["epoch"], state["agent_step"]) == (5, 500)
    expected = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(state["optimizer_state"]["state"][0]["exp_avg"], expected)
    names = backend.raw_fs.ls(backend.raw_path("runs/ppo.trainer/manifest"), detail=False)
    assert [name.rsplit("/", 1)[1] for name in names] == ["0000000005.parquet"]


def test_import_into_the_backend_then_again(backend, tmp_path):
    source = tmp_path / "checkpoints"
    source.mkdir()
    weights = {"w": torch.arange(6.0)}
    for epoch in (0, 10):
        torch.save(weights, source / f"model_{epoch:04d}.pt")
        (source / f"model_{epoch:04d}.yaml").write_text(
            yaml.safe_dump({"epoch": epoch, "score": epoch / 10, "run": "old"})
        )
    first = castore.import_checkpoints([source], backend.url, "old", **backend.storage_options)
    assert [(i.epoch, i.action) for i in first.items] == [(0, "imported"), (10, "imported")]
    again = castore.import_checkpoints([source], backend.url, "old", **backend.storage_options)
    assert [i.action for i in again.items] == ["skipped", "skipped"]
    manager = manager_for(backend, "old")
    assert [row["score"] for row in manager.list_all_checkpoints()] == [0.0, 1.0]
    assert torch.equal(manager.load_agent(10)["w"], weights["w"])
