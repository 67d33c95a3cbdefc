"""CheckpointManager: the calls a training loop already makes, over castore."""

from __future__ import annotations

import pytest
import torch

import castore
from castore.api.manager import TRAINER_SUFFIX


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )
        self.episodes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_epoch(agent: Policy, optimizer: torch.optim.Optimizer, seed: int) -> float:
    """A few real gradient steps on a fixed regression task; returns a score."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    target = torch.stack([x.sum(1), x[:, 0] - x[:, 1]], dim=1)
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(agent(x), target)
        loss.backward()
        optimizer.step()
    agent.episodes += 1
    return -loss.item()


SCORES = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2]


def training_loop(
    manager: castore.CheckpointManager, epochs: range
) -> tuple[Policy, list[str], torch.optim.Optimizer]:
    """The loop as teams write it: resume if there is a checkpoint, else start fresh."""
    torch.manual_seed(0)
    agent = manager.load_agent(trust=True) or Policy()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    trainer = manager.load_trainer_state()
    if trainer is not None:
        optimizer.load_state_dict(trainer["optimizer_state"])
    uris = []
    for epoch in epochs:
        train_epoch(agent, optimizer, seed=epoch)
        metadata = {
            "epoch": epoch,
            "agent_step": 100 * (epoch + 1),
            "score": SCORES[epoch],
            "avg_reward": float(epoch),
            "run": "ppo-seed7",
        }
        uris.append(manager.save_agent(agent, epoch, metadata))
        manager.save_trainer_state(optimizer, epoch, 100 * (epoch + 1))
    return agent, uris, optimizer


@pytest.fixture
def url(tmp_path):
    return str(tmp_path / "store")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_a_new_run_loads_none_then_resumes_where_it_stopped(url):
    manager = castore.CheckpointManager(url, "ppo")
    assert manager.load_agent() is None
    assert manager.load_trainer_state() is None
    agent, uris, optimizer = training_loop(manager, range(3))
    assert uris == [f"castore+file://{url}#ppo@{e}" for e in range(3)]

    resumed = castore.CheckpointManager(url, "ppo", trust=True)
    loaded = resumed.load_agent()
    assert type(loaded) is Policy
    assert loaded.episodes == 3
    assert_same_weights(agent, loaded)
    trainer = resumed.load_trainer_state()
    assert trainer["epoch"] == 2
    assert trainer["agent_step"] == 300
    saved, expected = trainer["optimizer_state"], optimizer.state_dict()
    assert saved["param_groups"] == expected["param_groups"]
    for index, moments in expected["state"].items():
        for name, value in moments.items():
            assert torch.equal(saved["state"][index][name], value), (index, name)
    training_loop(resumed, range(3, 6))
    assert resumed.run.epochs() == list(range(6))
    assert resumed.trainer_run.epochs() == [5]


def test_whole_modules_need_trust_and_the_state_dict_path_does_not(url):
    manager = castore.CheckpointManager(url, "ppo")
    agent, _, _ = training_loop(manager, range(1))
    with pytest.raises(castore.UnsafeLoadError, match="trust=True"):
        manager.load_agent()
    assert_same_weights(agent, manager.load_agent(trust=True))
    fresh = Policy()
    manager.run.load_into(fresh)
    assert_same_weights(agent, fresh)
    manager.save_agent(agent.state_dict(), 1, {"score": 0.5})
    state = manager.load_agent(1)
    assert list(state) == list(agent.state_dict())


def test_finding_and_selecting_checkpoints(url):
    manager = castore.CheckpointManager(url, "ppo")
    _, uris, _ = training_loop(manager, range(6))
    assert manager.find_best_checkpoint() == uris[1]
    assert manager.find_best_checkpoint("-avg_reward") == uris[0]
    assert manager.find_best_checkpoint("missing") is None
    assert manager.find_checkpoints_by_score(0.5) == [uris[1], uris[3], uris[4]]
    assert manager.find_checkpoints_by_score(2) == []
    assert manager.select("top", 2) == [uris[1], uris[3]]
    assert manager.select("latest", 2) == [uris[5], uris[4]]
    assert manager.select("all") == uris
    picked = manager.select("rand", 3, seed=4)
    assert picked == manager.select("rand", 3, seed=4)
    assert len(set(picked)) == 3
    assert set(picked) <= set(uris)
    with pytest.raises(castore.InvalidCheckpointError, match="unknown strategy"):
        manager.select("best")


def test_list_all_checkpoints_has_metadata_and_annotated_metrics(url):
    manager = castore.CheckpointManager(url, "ppo")
    _, uris, _ = training_loop(manager, range(2))
    manager.run.annotate(1, {"eval_score": 0.75})
    listed = manager.list_all_checkpoints()
    assert listed == [
        {
            "uri": uris[0],
            "epoch": 0,
            "agent_step": 100,
            "score": 0.1,
            "avg_reward": 0.0,
            "run": "ppo-seed7",
        },
        {
            "uri": uris[1],
            "epoch": 1,
            "agent_step": 200,
            "score": 0.9,
            "avg_reward": 1.0,
            "run": "ppo-seed7",
            "eval_score": 0.75,
        },
    ]
    table = manager.run.checkpoints()
    assert table["step"].tolist() == [100, 200]
    assert table["score"].tolist() == [0.1, 0.9]


def test_uris_are_accepted_back_everywhere(url):
    manager = castore.CheckpointManager(url, "ppo", trust=True)
    agent, uris, _ = training_loop(manager, range(2))
    other = castore.CheckpointManager(url, "other-run", trust=True)
    assert_same_weights(agent, other.load_agent(uris[1]))
    tree = castore.load(uris[0], keys="agent.*")
    assert set(tree["agent"]) == set(agent.state_dict())
    with pytest.raises(castore.NotFoundError):
        manager.load_agent(uris[1].replace("@1", "@7"))
    with pytest.raises(castore.NotFoundError):
        manager.load_agent(9)


def test_retention_keeps_last_and_best_and_always_the_latest(url):
    manager = castore.CheckpointManager(url, "ppo", keep_last=2, keep_best=1)
    training_loop(manager, range(6))
    assert manager.run.epochs() == [1, 4, 5]
    only_best = castore.CheckpointManager(url, "best-only", keep_best=1)
    training_loop(only_best, range(4))
    assert only_best.run.epochs() == [1, 3]


def test_retention_before_any_checkpoint_has_the_metric(url):
    manager = castore.CheckpointManager(url, "ppo", keep_best=1)
    for epoch in range(3):
        manager.save_agent({"w": torch.ones(1)}, epoch, {"loss": 1.0})
    assert manager.run.epochs() == [0, 1, 2]
    both = castore.CheckpointManager(url, "both", keep_last=2, keep_best=1)
    for epoch in range(4):
        both.save_agent({"w": torch.ones(1)}, epoch, {"loss": 1.0})
    assert both.run.epochs() == [2, 3]
    both.save_agent({"w": torch.ones(1)}, 4, {"score": 0.5})
    both.save_agent({"w": torch.ones(1)}, 5, {"score": 0.1})
    both.save_agent({"w": torch.ones(1)}, 6, {"score": 0.2})
    assert both.run.epochs() == [4, 5, 6]


def test_trainer_state_replaces_the_previous_one(url):
    manager = castore.CheckpointManager(url, "ppo")
    opt = torch.optim.SGD(Policy().parameters(), lr=0.1, momentum=0.9)
    manager.save_trainer_state(opt, 3, 30)
    manager.save_trainer_state(opt, 3, 31)
    manager.save_trainer_state({"custom": torch.ones(2)}, 4, 40)
    assert manager.trainer_run.epochs() == [4]
    assert manager.trainer_run.name == "ppo" + TRAINER_SUFFIX
    state = manager.load_trainer_state()
    assert state["agent_step"] == 40
    assert torch.equal(state["optimizer_state"]["custom"], torch.ones(2))


def test_bad_input_is_refused_before_writing(url):
    manager = castore.CheckpointManager(url, "ppo")
    with pytest.raises(castore.InvalidCheckpointError, match="metadata 'bad' is a object"):
        manager.save_agent(Policy(), 0, {"bad": object()})
    with pytest.raises(castore.InvalidCheckpointError, match="metadata keys must be str"):
        manager.save_agent(Policy(), 0, {1: 2})
    with pytest.raises(castore.InvalidCheckpointError, match="epoch"):
        manager.save_agent(Policy(), -1)
    with pytest.raises(castore.InvalidCheckpointError, match="keep_last"):
        castore.CheckpointManager(url, "ppo", keep_last=-1)
    with pytest.raises(castore.InvalidCheckpointError, match="min_score"):
        manager.find_checkpoints_by_score("high")
    assert manager.run.epochs() == []
    with pytest.raises(castore.NotFoundError):
        castore.CheckpointManager(url + "-absent", "ppo", create=False)
