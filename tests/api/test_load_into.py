"""run.load_into(module): straight into the parameters, with load_state_dict's contract."""

from __future__ import annotations

import dataclasses
import uuid

import fsspec
import pytest
import torch

import castore
import castore.api.load_into as load_into_module
from castore.api.load_into import resolve_prefix

SMALL = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Net(torch.nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, hidden)
        self.norm = torch.nn.BatchNorm1d(hidden)
        self.out = torch.nn.Linear(hidden, 4)


@pytest.fixture
def run():
    name = f"castore-loadinto-{uuid.uuid4().hex}"
    yield castore.open(f"memory://{name}", chunking=SMALL).run("r")
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def trained() -> Net:
    net = Net()
    net.norm.running_mean.normal_()
    net.norm.num_batches_tracked.fill_(5)
    return net


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_writes_into_the_parameters_own_memory(run):
    source = trained()
    run.save({"model": source.state_dict(), "optimizer": {"m": torch.randn(5000)}}, epoch=0)
    target = Net()
    pointers = {k: t.data_ptr() for k, t in target.state_dict(keep_vars=True).items()}
    versions = {k: t._version for k, t in target.state_dict(keep_vars=True).items()}
    result = run.load_into(target)
    assert result == ([], [])
    assert result.missing_keys == result.unexpected_keys == []
    assert_same(source, target)
    after = target.state_dict(keep_vars=True)
    assert {k: t.data_ptr() for k, t in after.items()} == pointers
    assert all(after[k]._version > versions[k] for k in after)  # saves see the change
    assert target.fc.weight.requires_grad


def test_fetches_only_the_module_blobs(run):
    source = trained()
    run.save({"model": source.state_dict(), "optimizer": {"m": torch.randn(50_000)}}, epoch=0)
    record = run.record(0)
    model_blobs = {
        c.digest for r in record.tensors if r.name.startswith("model.") for c in r.chunks
    }
    before = run.store.transfer_stats()
    run.load_into(Net())
    assert (run.store.transfer_stats() - before).blobs_downloaded == len(model_blobs)


def test_bare_state_dict_and_explicit_prefix(run):
    source = trained()
    run.save(source.state_dict(), epoch=0)
    run.save({"actor": source.state_dict(), "critic": Net(8).state_dict()}, epoch=1)
    bare = Net()
    run.load_into(bare, epoch=0)
    assert_same(source, bare)
    for prefix in ("actor", "actor."):
        target = Net()
        run.load_into(target, epoch=1, prefix=prefix)
        assert_same(source, target)


def test_auto_prefix_must_be_unambiguous(run):
    source = trained()
    run.save({"online": source.state_dict(), "target": source.state_dict()}, epoch=0)
    with pytest.raises(castore.InvalidCheckpointError, match=r"'online\.', 'target\.'"):
        run.load_into(Net())
    names = ["model.fc.weight", "model.fc.bias", "fc.weight"]
    assert resolve_prefix(None, names, ["fc.weight", "fc.bias"]) == "model."
    assert resolve_prefix(None, ["m.a", "m.b", "n.a"], ["a", "b"]) == "m."


def test_shape_mismatch_names_both_shapes_and_changes_nothing(run):
    run.save({"model": Net(hidden=8).state_dict()}, epoch=0)
    target = Net()
    before = {k: t.clone() for k, t in target.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(castore.InvalidCheckpointError) as raised:
            run.load_into(target, strict=strict, prefix="model")
        message = str(raised.value)
        assert "fc.weight: the checkpoint's model.fc.weight has shape [8, 16]" in message
        assert "the module's has [32, 16]" in message
        assert "norm.running_mean" in message
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key])


def test_missing_and_unexpected_keys(run):
    state = trained().state_dict()
    del state["out.bias"]
    state["extra.weight"] = torch.ones(3)
    run.save({"model": state}, epoch=0)
    with pytest.raises(castore.InvalidCheckpointError, match=r"1 missing key\(s\): out\.bias"):
        run.load_into(Net())
    target = Net()
    result = run.load_into(target, strict=False)
    assert result.missing_keys == ["out.bias"]
    assert result.unexpected_keys == ["extra.weight"]
    assert torch.equal(target.fc.weight, state["fc.weight"])


def test_dtype_conversion_and_non_contiguous_parameters_go_through_a_buffer(run):
    source = trained()
    run.save({"model": source.state_dict()}, epoch=0)
    target = Net().double()
    with torch.no_grad():
        target.out.weight = torch.nn.Parameter(torch.empty(32, 4, dtype=torch.float64).t())
    pointer = target.fc.weight.data_ptr()
    run.load_into(target)
    assert target.fc.weight.dtype == torch.float64
    assert target.fc.weight.data_ptr() == pointer
    assert torch.equal(target.fc.weight, source.fc.weight.double())
    assert torch.equal(target.out.weight, source.out.weight.double())


def test_tied_parameters_and_saved_aliases(run):
    source = torch.nn.Module()
    source.embed = torch.nn.Embedding(10, 6)
    source.head = torch.nn.Linear(6, 10, bias=False)
    source.head.weight = source.embed.weight
    run.save(source.state_dict(), epoch=0)
    assert [r.role for r in run.record(0).tensors] == ["tensor", "alias"]
    target = torch.nn.Module()
    target.embed = torch.nn.Embedding(10, 6)
    target.head = torch.nn.Linear(6, 10, bias=False)
    target.head.weight = target.embed.weight
    run.load_into(target)
    assert target.head.weight is target.embed.weight
    assert torch.equal(target.embed.weight, source.embed.weight)


def test_checkpoint_handle_and_verify_false(run):
    source = trained()
    run.save({"model": source.state_dict()}, epoch=3)
    target = Net()
    assert run.open().load_into(target, verify=False) == ([], [])
    assert_same(source, target)


def test_batches_bound_the_buffers(run, monkeypatch):
    source = trained()
    run.save({"model": source.state_dict()}, epoch=0)
    tight = castore.TransferOptions(workers=2, max_in_flight_bytes=1024)
    monkeypatch.setattr(
        run.store, "options", dataclasses.replace(run.store.options, transfer=tight)
    )
    calls = []
    real = load_into_module.fetch_jobs
    monkeypatch.setattr(
        load_into_module, "fetch_jobs", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    target = Net().double()  # every tensor goes through a buffer
    run.load_into(target)
    assert len(calls) > 1
    assert torch.equal(target.out.weight, source.out.weight.double())


@needs_cuda
def test_loads_into_a_module_on_the_gpu(run):
    source = trained()
    run.save({"model": source.state_dict()}, epoch=0)
    target = Net().cuda()
    run.load_into(target)
    assert_same(source, target.cpu())
