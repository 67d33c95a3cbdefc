"""``castore demo`` trains for real, and its best checkpoint re-scores exactly."""

from __future__ import annotations

import re

import castore
from castore.cli.main import main


def _scores(out: str) -> tuple[float, float]:
    recorded = re.search(r"recorded score (\S+)", out)
    rescored = re.search(
        r"re-evaluated after loading from castore: score (\S+), matches exactly", out
    )
    assert recorded is not None, out
    assert rescored is not None, out
    return float(recorded.group(1)), float(rescored.group(1))


def test_demo_twice_into_one_store(capsys, tmp_path):
    url = str(tmp_path / "demo")
    assert main(["demo", "--store", url, "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    recorded, rescored = _scores(out)
    assert rescored == recorded

    run = castore.open(url, create=False).run("cartpole")
    assert run.epochs() == [0, 1, 2]
    assert run.record(run.best("score")).metrics["score"] == recorded
    assert set(run.record(2).metrics) == {"score", "avg_reward"}
    assert "torch.save, one file per checkpoint" in out

    assert main(["demo", "--store", url, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "run cartpole-2" in out
    recorded, rescored = _scores(out)
    assert rescored == recorded
    store = castore.open(url, create=False)
    assert store.runs() == ["cartpole", "cartpole-2"]
    assert store.run("cartpole-2").epochs() == [0, 1]
