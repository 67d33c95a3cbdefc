"""Whole objects saved with pickle=True: tensors externalised, trust required to unpickle."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import castore
from castore.snapshot.pickled import pickle_object, unpickle_object
from castore.snapshot.tree import flatten_tree, pickled_objects, unflatten_tree


class Agent(torch.nn.Module):
    """A policy with the things real agents carry: tied weights, a buffer, a frozen
    layer, a plain attribute and a tensor outside the state dict."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, hidden)
        self.body = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.Tanh())
        self.head = torch.nn.Linear(hidden, 4)
        self.decode = torch.nn.Linear(hidden, 4)
        self.decode.weight = self.head.weight
        self.register_buffer("steps", torch.tensor(7))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.body[0].weight.requires_grad_(False)
        self.name = "ppo"
        self.obs_mean = torch.arange(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x)))


@pytest.fixture
def run(tmp_path):
    return castore.open(tmp_path / "store").run("agents")


def assert_same_agent(a: Agent, b: Agent) -> None:
    assert type(b) is Agent
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert b.name == "ppo"
    assert torch.equal(b.obs_mean, a.obs_mean)
    assert torch.equal(b.scratch, a.scratch)
    assert b.decode.weight is b.head.weight
    assert isinstance(b.head.weight, torch.nn.Parameter)
    assert b.head.weight.requires_grad
    assert not b.body[0].weight.requires_grad
    assert not b.steps.requires_grad


def test_module_round_trips_whole_with_trust(run):
    agent = Agent()
    run.save(agent, epoch=0, pickle=True)
    loaded = run.load(0, trust=True)
    assert_same_agent(agent, loaded)
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), agent(x))


def test_tensors_are_leaves_named_like_the_state_dict(run):
    agent = Agent()
    run.save({"agent": agent, "epoch": 3}, epoch=0, pickle=True)
    keys = run.open(0).keys()
    assert keys[: len(agent.state_dict())] == [f"agent.{k}" for k in agent.state_dict()]
    assert set(keys[len(agent.state_dict()) :]) == {"agent._pickled.0", "agent._pickled.1"}
    assert pickled_objects(run.record(0).skeleton) == [("agent", f"{__name__}.Agent")]


def test_loading_without_trust_refuses_before_fetching_anything(run, tmp_path):
    run.save(Agent(), epoch=0, pickle=True)
    before = run.store.transfer_stats()
    with pytest.raises(castore.UnsafeLoadError) as raised:
        run.load(0)
    message = str(raised.value)
    assert f"pickled {__name__}.Agent at '<root>'" in message
    assert "trust=True" in message
    assert "load_into" in message
    assert run.store.transfer_stats() == before
    with pytest.raises(castore.UnsafeLoadError):
        run.open(0).load()


def test_state_dict_path_needs_no_trust(run):
    agent = Agent()
    run.save({"agent": agent, "step": 5}, epoch=0, pickle=True)
    tree = run.load(0, keys="*")
    assert tree["step"] == 5
    for key, value in agent.state_dict().items():
        assert torch.equal(tree["agent"][key], value)
    fresh = Agent()
    torch.nn.init.zeros_(fresh.head.weight)
    missing, unexpected = run.load_into(fresh, 0, strict=False)
    assert missing == []
    assert set(unexpected) == {"_pickled.0", "_pickled.1"}
    for key, value in agent.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_an_unchanged_module_saves_no_new_blobs_and_deltas_apply(run):
    agent = Agent(hidden=256)
    first = run.save(agent, epoch=0, pickle=True)
    assert first.blobs_written > 0
    again = run.save(agent, epoch=1, pickle=True)
    assert again.blobs_written == 0
    assert again.new_bytes == 0
    with torch.no_grad():
        agent.head.bias.add_(1.0)
    changed = run.save(agent, epoch=2, pickle=True)
    assert 0 < changed.stored_bytes < first.stored_bytes / 100


def test_async_save_of_a_whole_module(run):
    agent = Agent()
    handle = run.save(agent, epoch=0, pickle=True, blocking=False)
    with torch.no_grad():
        agent.head.weight.zero_()
    handle.result()
    loaded = run.load(0, trust=True)
    assert not torch.equal(loaded.head.weight, agent.head.weight)
    assert loaded.head.weight.abs().sum() > 0


def test_without_pickle_a_module_is_its_state_dict_and_objects_are_refused(run):
    agent = Agent()
    run.save(agent, epoch=0)
    assert list(run.load(0)) == list(agent.state_dict())
    with pytest.raises(castore.InvalidCheckpointError, match="pickle=True"):
        run.save({"agent": agent}, epoch=1)
    assert run.epochs() == [0]


def test_unpicklable_object_and_tensor_subclass_are_refused_before_writing(run):
    agent = Agent()
    agent.hook = lambda x: x
    with pytest.raises(castore.InvalidCheckpointError, match=r"cannot pickle .*Agent at 'a'"):
        run.save({"a": agent}, epoch=0, pickle=True)

    class Tagged(torch.Tensor):
        pass

    holder = Agent()
    holder.obs_mean = torch.ones(2).as_subclass(Tagged)
    with pytest.raises(castore.InvalidCheckpointError, match="Tagged tensor subclass at 'h'"):
        run.save({"h": holder}, epoch=0, pickle=True)
    assert run.epochs() == []


def test_unknown_persistent_ids_are_refused():
    class Forged(pickle.Pickler):
        def persistent_id(self, obj):
            return ("not-castore", 0) if isinstance(obj, torch.Tensor) else None

    import io

    buffer = io.BytesIO()
    Forged(buffer).dump([torch.ones(1)])
    with pytest.raises(pickle.UnpicklingError, match="unknown persistent id"):
        unpickle_object(buffer.getvalue(), [torch.ones(1)])


@settings(max_examples=25, deadline=None)
@given(
    hidden=st.integers(1, 16),
    depth=st.integers(1, 3),
    tie=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
def test_random_modules_round_trip_through_the_tree(hidden, depth, tie, dtype):
    layers = [torch.nn.Linear(hidden, hidden) for _ in range(depth)]
    if tie and depth > 1:
        layers[-1].weight = layers[0].weight
    model = torch.nn.Sequential(*layers).to(dtype)
    flat = flatten_tree({"m": model, "n": 1}, pickle=True)
    assert flat.names[: len(model.state_dict())] == tuple(f"m.{k}" for k in model.state_dict())
    rebuilt = unflatten_tree(flat.skeleton, [t.clone() for t in flat.tensors], trust=True)
    assert rebuilt["n"] == 1
    assert [type(m) for m in rebuilt["m"]] == [torch.nn.Linear] * depth
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt["m"].state_dict()[key], value)
        assert rebuilt["m"].state_dict()[key].dtype == dtype
    if tie and depth > 1:
        assert rebuilt["m"][-1].weight is rebuilt["m"][0].weight


def test_pickle_object_lists_tied_names_once_each():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[1].weight = model[0].weight
    pickled = pickle_object(model, "m")
    names = [name for name, _ in pickled.tensors]
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert pickled.tensors[0][1].data_ptr() == pickled.tensors[2][1].data_ptr()
    assert b"torch.nn.modules.linear" in pickled.payload
