"""A store may hold pickles written by anyone: nothing castore does runs them untrusted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import castore
from castore.cli.main import main


class Planted:
    """Unpickling this creates ``marker``: the stand-in for code from the store."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def planted(tmp_path):
    marker = tmp_path / "code-ran"
    store = castore.open(tmp_path / "store")
    state = {"agent": {"w": torch.ones(3)}, "metadata": Planted(str(marker)), "x": 1}
    store.run("r").save(state, epoch=0, pickle=True)
    return store.run("r"), marker


def test_every_untrusted_read_path_leaves_the_pickle_alone(planted, tmp_path, capsys):
    run, marker = planted
    with pytest.raises(castore.UnsafeLoadError, match=r"pickled \S*Planted at 'metadata'"):
        run.load(0)
    with pytest.raises(castore.UnsafeLoadError):
        run.open(0).load()
    uri = castore.checkpoint_uri(run.store, "r", 0)
    with pytest.raises(castore.UnsafeLoadError):
        castore.load(uri)
    manager = castore.CheckpointManager(run.store.url, "r")
    with pytest.raises(castore.UnsafeLoadError):
        manager.load_agent(0)
    assert manager.list_all_checkpoints() == [{"uri": uri, "epoch": 0}]
    tree = run.load(0, keys="*")
    assert torch.equal(tree["agent"]["w"], torch.ones(3))
    assert tree["x"] == 1
    assert dict(tree["metadata"]) == {}
    assert run.open(0).keys() == ["agent.w"]
    result = castore.export_checkpoint(run, 0, tmp_path / "out.pt")
    exported = torch.load(result.path, weights_only=True)
    assert torch.equal(exported["agent"]["w"], torch.ones(3))
    assert main(["show", run.store.url, "r", "0"]) == 0
    assert main(["ls", run.store.url, "r"]) == 0
    capsys.readouterr()
    assert not marker.exists()


def test_trust_runs_it_which_is_why_it_is_off_by_default(planted):
    run, marker = planted
    run.load(0, trust=True)
    assert marker.exists()
