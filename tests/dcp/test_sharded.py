"""castore.dcp with real process groups: gloo on 127.0.0.1, FSDP2 on a CPU mesh.

Two ranks save (epoch 0; epoch 1 unchanged; epoch 2 fails on one rank; epoch 3 with
``async_save`` after a training step), four ranks load epochs 1 and 3 back, resharded by
DCP's planner, and save epoch 4; this process then loads epoch 4 whole. The rank code is
in ``workers.py``; the two worlds run once per module and the tests check their effects.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

import castore
from castore.dcp import StorageReader
from tests.dcp import workers

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The store after the 2-rank and then the 4-rank world ran, and the oracles' folder."""
    directory = tmp_path_factory.mktemp("dcp")
    url = str(directory / "store")
    workers.spawn(workers.save_world, 2, url, str(directory))
    workers.spawn(workers.load_world, 4, url, str(directory))
    return url, directory


def _oracle(directory, epoch: int) -> dict:
    return torch.load(directory / f"oracle-{epoch}.pt", weights_only=True)


def _zeros_like(tree):
    if isinstance(tree, dict):
        return {key: _zeros_like(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_zeros_like(value) for value in tree]
    if isinstance(tree, torch.Tensor):
        return torch.zeros_like(tree)
    return tree


def test_failed_rank_leaves_no_checkpoint_and_the_others_are_listed(saved):
    url, _ = saved
    run = castore.open(url).run(workers.RUN)
    assert run.epochs() == [0, 1, 3, 4]
    assert castore.open(url).verify().ok


def test_unchanged_resave_wrote_no_blob(saved):
    url, _ = saved
    run = castore.open(url).run(workers.RUN)
    first, second = run.record(0), run.record(1)
    assert first.new_blobs > 0
    assert second.new_blobs == 0
    assert [r.name for r in first.tensors] == [r.name for r in second.tensors]
    assert [r.chunks for r in first.tensors] == [r.chunks for r in second.tensors]


def test_items_are_named_by_fqn_and_shard_region(saved):
    url, _ = saved
    run = castore.open(url).run(workers.RUN)
    two = {ref.name for ref in run.record(1).tensors}
    assert {"items.model.0.weight[0:16,0:16]", "items.model.0.weight[16:32,0:16]"} <= two
    assert {"items.extra[0:6,0:5]", "items.extra[0:6,5:10]", "items.meta.note"} <= two
    # FSDP keeps Adam's step replicated; DCP writes it once, whole.
    assert "items.optim.state.0.weight.step" in two
    four = {ref.name for ref in run.record(4).tensors}
    assert {f"items.extra[0:6,{a}:{b}]" for a, b in ((0, 3), (3, 6), (6, 9), (9, 10))} <= four


def test_metrics_and_best_work_as_for_any_checkpoint(saved):
    url, _ = saved
    store = castore.open(url)
    run = store.run(workers.RUN)
    table = run.checkpoints()
    assert table["epoch"].tolist() == [0, 1, 3, 4]
    assert table["step"].tolist() == [1, 1, 2, 3]
    assert run.best("-loss") == 4
    found = store.query("SELECT epoch FROM checkpoints WHERE parent_epoch = 1")
    assert found["epoch"].tolist() == [3]


def test_load_at_world_size_one(saved):
    """Epoch 4 was saved by 4 ranks; load it whole into plain tensors here."""
    url, directory = saved
    expected = _oracle(directory, 4)
    loaded = _zeros_like(expected)
    dcp.load(loaded, storage_reader=StorageReader(url, workers.RUN, 4), no_dist=True)
    workers.assert_same(expected, loaded)


def test_load_without_a_template_rebuilds_the_nested_state(saved):
    """DCP's empty-state-dict planner, called as ``format_utils.dcp_to_torch_save`` calls
    it, needs the planner data kept in the manifest part to rebuild the nesting."""
    url, directory = saved
    loaded: dict = {}
    reader = StorageReader(url, workers.RUN, best="-loss")
    _load_state_dict(loaded, reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    expected = _oracle(directory, 4)
    workers.assert_same(expected["model"], loaded["model"])
    workers.assert_same(expected["extra"], loaded["extra"])
    assert loaded["meta"] == {"note": "dcp test", "step": 3}


def test_a_rank_process_dying_before_the_commit_leaves_no_checkpoint(tmp_path):
    url = str(tmp_path / "store")
    with pytest.raises(mp.ProcessExitedException, match="exit code 3"):
        workers.spawn(workers.crash_world, 2, url)
    store = castore.open(url)
    assert store.run(workers.RUN).epochs() == []
    assert store.blobs.sizes()  # the dead rank's blobs were written, and are unreferenced
