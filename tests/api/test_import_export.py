"""``import_checkpoints`` and ``export_checkpoint``: an old-style checkpoint directory,
written by a real (tiny) training loop, moves into castore and back out to plain files."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import castore
from castore.api.export import export_checkpoint
from castore.api.importer import import_checkpoints
from castore.api.uri import checkpoint_uri


class Agent(torch.nn.Module):
    """Module level, so ``torch.save(agent)`` files unpickle in the tests."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )
        self.episodes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


RUN_LABEL = "ppo-seed7"
SIDECARS = {
    0: {"epoch": 0, "agent_step": 100, "score": 0.25, "avg_reward": -1.5, "total_time": 3.5},
    10: {"epoch": 10, "agent_step": 1100, "score": 0.5, "avg_reward": 2.0, "total_time": 7.25},
}
TRAINER_EPOCH, TRAINER_STEP = 30, 3100


@dataclass
class OldRun:
    """What ``write_old_run`` saved, as the training loop had it in memory."""

    root: Path
    checkpoints: Path
    states: dict[str, dict[str, torch.Tensor]]  # file name -> the state dict it holds
    agent: Agent  # the module saved whole in model_0020.pt
    optimizer_state: dict[str, Any]


def write_old_run(root: Path) -> OldRun:
    """Train a 2-layer MLP for a few Adam steps per epoch and checkpoint it the way a
    hand-written manager does, plus the odd files real directories collect:

    model_0000.pt + .yaml, model_0010.pt + .json, model_0011.pt (a byte copy of 0010),
    best.pt ({"model_state_dict", "epoch": 15, "score"}, no sidecar), model_0020.pt (the
    whole module), model_0030.safetensors (``__metadata__``), trainer_state.pt, an orphan
    model_0040.yaml, latest.pt (no epoch anywhere) and a corrupt model_0050.pt.
    """
    checkpoints = root / "run_dir" / "checkpoints"
    checkpoints.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    agent = Agent()
    optimizer = torch.optim.Adam(agent.parameters(), lr=1e-2)
    x = torch.randn(32, 4, generator=generator)
    target = torch.randn(32, 2, generator=generator)

    def train_epoch() -> dict[str, torch.Tensor]:
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(agent(x), target).backward()
            optimizer.step()
        return {k: v.detach().clone() for k, v in agent.state_dict().items()}

    states = {}
    for epoch, suffix in ((0, ".yaml"), (10, ".json")):
        states[f"model_{epoch:04d}.pt"] = state = train_epoch()
        torch.save(state, checkpoints / f"model_{epoch:04d}.pt")
        sidecar = {**SIDECARS[epoch], "run": RUN_LABEL}
        text = yaml.safe_dump(sidecar) if suffix == ".yaml" else json.dumps(sidecar)
        (checkpoints / f"model_{epoch:04d}{suffix}").write_text(text)
    shutil.copyfile(checkpoints / "model_0010.pt", checkpoints / "model_0011.pt")
    states["model_0011.pt"] = states["model_0010.pt"]

    states["best.pt"] = train_epoch()
    best = {"model_state_dict": states["best.pt"], "epoch": 15, "score": 0.625}
    torch.save(best, checkpoints / "best.pt")

    states["model_0020.pt"] = train_epoch()
    agent.episodes = 4
    torch.save(agent, checkpoints / "model_0020.pt")
    whole = Agent()
    whole.load_state_dict(states["model_0020.pt"])
    whole.episodes = 4

    states["model_0030.safetensors"] = train_epoch()
    header = {"epoch": "30", "score": "0.875", "run": RUN_LABEL}
    save_file(states["model_0030.safetensors"], checkpoints / "model_0030.safetensors", header)
    optimizer_state = copy.deepcopy(optimizer.state_dict())  # later steps change it in place
    trainer = {
        "optimizer_state": optimizer.state_dict(),
        "epoch": TRAINER_EPOCH,
        "agent_step": TRAINER_STEP,
    }
    torch.save(trainer, checkpoints / "trainer_state.pt")

    (checkpoints / "model_0040.yaml").write_text(yaml.safe_dump({"epoch": 40, "score": 1.0}))
    states["latest.pt"] = train_epoch()
    torch.save(states["latest.pt"], checkpoints / "latest.pt")
    (checkpoints / "model_0050.pt").write_bytes(b"not a torch file")
    return OldRun(root / "run_dir", checkpoints, states, whole, optimizer_state)


TRUST_REASON = (
    "holds pickled objects (a whole module?) that weights_only=True refuses; "
    "import with --trust if you trust the file"
)
NO_EPOCH = "no epoch: neither an 'epoch' entry nor digits ending the file name"
CORRUPT = "not a readable torch file: at position 0, opcode b'n' unknown"
CORRUPT_TRUSTED = "not a readable torch file: invalid load key, 'n'."


def expected_report(action: str, *, trusted: bool = False) -> list[tuple]:
    """(file, kind, epoch, action, reason) of every file, in report order."""
    return [
        ("latest.pt", "checkpoint", None, "skipped", NO_EPOCH),
        ("model_0000.pt", "checkpoint", 0, action, ""),
        ("model_0010.pt", "checkpoint", 10, action, ""),
        ("model_0011.pt", "checkpoint", 11, action, ""),
        ("best.pt", "checkpoint", 15, action, ""),
        ("model_0020.pt", "checkpoint", 20, action, "")
        if trusted
        else ("model_0020.pt", "checkpoint", 20, "skipped", TRUST_REASON),
        ("model_0030.safetensors", "checkpoint", 30, action, ""),
        ("model_0050.pt", "checkpoint", 50, "skipped", CORRUPT_TRUSTED if trusted else CORRUPT),
        ("model_0040.yaml", "sidecar", None, "skipped", "no checkpoint file beside it"),
        ("trainer_state.pt", "trainer state", TRAINER_EPOCH, action, ""),
    ]


def rows(report: castore.ImportReport) -> list[tuple]:
    return [(Path(i.path).name, i.kind, i.epoch, i.action, i.reason) for i in report.items]


def assert_tree_equal(actual: Any, expected: Any, where: str = "<root>") -> None:
    """Same containers, keys in order, plain values and bit-identical tensors."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), where
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert list(actual) == list(expected), where
        for key, value in expected.items():
            assert_tree_equal(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert type(actual) is type(expected), where
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_tree_equal(a, e, f"{where}.{index}")
    else:
        assert type(actual) is type(expected), where
        assert actual == expected, where


def n_blobs(store_url: str) -> int:
    return sum(1 for p in (Path(store_url) / "blobs").rglob("*") if p.is_file())


def store_files(store_url: str) -> list[str]:
    root = Path(store_url)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def by_name(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flat dict in name order (safetensors files keep their own order)."""
    return dict(sorted(tensors.items()))


def nan_to_none(values: Any) -> list:
    return [None if v != v else v for v in values]


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> OldRun:
    return write_old_run(tmp_path_factory.mktemp("old"))


@dataclass
class Imported:
    url: str
    report: castore.ImportReport  # the first import, without trust
    trusted: castore.ImportReport  # the same directory again, with trust


@pytest.fixture(scope="module")
def imported(old_run: OldRun, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Read-only for the tests: the old run imported, then imported again with trust."""
    url = str(tmp_path_factory.mktemp("imported") / "store")
    report = import_checkpoints([old_run.root], url, "ppo")
    trusted = import_checkpoints([old_run.root], url, "ppo", trust=True)
    return Imported(url, report, trusted)


# ---- import -------------------------------------------------------------------------------


def test_dry_run_of_a_new_store_reports_and_creates_nothing(old_run, tmp_path):
    url = tmp_path / "store"
    report = import_checkpoints([old_run.root], str(url), "ppo", dry_run=True)
    assert rows(report) == expected_report("would import")
    assert {item.new_bytes for item in report.items} == {0}
    assert not url.exists()
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_an_existing_store_adds_no_epochs(old_run, tmp_path):
    url = str(tmp_path / "store")
    first = import_checkpoints([old_run.checkpoints / "model_0010.pt"], url, "ppo")
    assert rows(first) == [("model_0010.pt", "checkpoint", 10, "imported", "")]
    before = store_files(url)

    report = import_checkpoints([old_run.root], url, "ppo", dry_run=True)
    expected = expected_report("would import")
    expected[2] = ("model_0010.pt", "checkpoint", 10, "skipped", "epoch 10 already in run ppo")
    assert rows(report) == expected
    assert store_files(url) == before
    assert castore.open(url).run("ppo").epochs() == [10]
    assert castore.open(url).runs() == ["ppo"]


def test_import_reports_each_file(imported):
    assert rows(imported.report) == expected_report("imported")
    assert [Path(i.path).name for i in imported.report.imported] == [
        "model_0000.pt",
        "model_0010.pt",
        "model_0011.pt",
        "best.pt",
        "model_0030.safetensors",
        "trainer_state.pt",
    ]
    assert [Path(i.path).name for i in imported.report.skipped] == [
        "latest.pt",
        "model_0020.pt",
        "model_0050.pt",
        "model_0040.yaml",
    ]


def test_import_with_trust_adds_the_whole_module_and_names_the_corrupt_file(imported):
    expected = []
    for name, kind, epoch, action, reason in expected_report("imported", trusted=True):
        if action == "imported" and name != "model_0020.pt":
            where = "run ppo" if kind == "checkpoint" else "the trainer state"
            action, reason = "skipped", f"epoch {epoch} already in {where}"
        expected.append((name, kind, epoch, action, reason))
    assert rows(imported.trusted) == expected


def test_new_bytes_show_dedup(imported, old_run):
    new = {Path(i.path).name: i.new_bytes for i in imported.report.items}
    state_bytes = sum(t.numel() * t.element_size() for t in old_run.states["latest.pt"].values())
    assert state_bytes == 4 * (8 * 4 + 8 + 2 * 8 + 2)
    # model_0011.pt is a byte copy of model_0010.pt: nothing new to store.
    assert new["model_0011.pt"] == 0
    assert new["model_0000.pt"] == new["model_0010.pt"] == new["best.pt"] == state_bytes
    assert new["model_0030.safetensors"] == state_bytes
    # Adam's two moments per parameter plus four 0-d steps.
    assert new["trainer_state.pt"] == 2 * state_bytes + 4 * 4
    assert {Path(i.path).name: i.new_bytes for i in imported.trusted.imported} == {
        "model_0020.pt": state_bytes
    }


def test_epochs_steps_and_metric_columns(imported):
    table = castore.open(imported.url).run("ppo").checkpoints()
    assert table["epoch"].tolist() == [0, 10, 11, 15, 20, 30]
    assert nan_to_none(table["step"]) == [100, 1100, None, None, None, None]
    assert nan_to_none(table["score"]) == [0.25, 0.5, None, 0.625, None, 0.875]
    assert nan_to_none(table["avg_reward"]) == [-1.5, 2.0, None, None, None, None]
    assert nan_to_none(table["total_time"]) == [3.5, 7.25, None, None, None, None]
    assert castore.open(imported.url).runs() == ["ppo", "ppo.trainer"]


def test_tensors_are_the_saved_ones(imported, old_run):
    run = castore.open(imported.url).run("ppo")
    for epoch, name in [(0, "model_0000.pt"), (10, "model_0010.pt"), (11, "model_0011.pt")]:
        assert_tree_equal(run.load(epoch)["agent"], old_run.states[name])
    best = {"model_state_dict": old_run.states["best.pt"], "epoch": 15, "score": 0.625}
    assert_tree_equal(run.load(15)["agent"], best)
    # A safetensors file keeps its own tensor order.
    safetensors = old_run.states["model_0030.safetensors"]
    assert_tree_equal(by_name(run.load(30)["agent"]), by_name(safetensors))


def test_metadata_round_trips(imported):
    manager = castore.CheckpointManager(imported.url, "ppo", create=False)
    listed = {row.pop("epoch"): row for row in manager.list_all_checkpoints()}
    assert sorted(listed) == [0, 10, 11, 15, 20, 30]
    for epoch, row in listed.items():
        assert row.pop("uri") == checkpoint_uri(manager.store, "ppo", epoch)
    for epoch in (0, 10):
        sidecar = {k: v for k, v in SIDECARS[epoch].items() if k != "epoch"}
        assert listed[epoch] == {**sidecar, "run": RUN_LABEL}
    assert listed[11] == listed[20] == {}
    assert listed[15] == {"score": 0.625}
    assert listed[30] == {"score": 0.875, "run": RUN_LABEL}
    # The metadata saved in the tree keeps its types, the epoch included.
    saved = manager.run.load(0)["metadata"]
    assert saved == {**SIDECARS[0], "run": RUN_LABEL}
    assert [type(saved[k]) for k in ("epoch", "agent_step", "score")] == [int, int, float]


def test_whole_module_loads_only_with_trust(imported, old_run):
    manager = castore.CheckpointManager(imported.url, "ppo", trust=True, create=False)
    agent = manager.load_agent(20)
    assert type(agent) is Agent
    assert_tree_equal(agent.state_dict(), old_run.agent.state_dict())
    assert agent.episodes == 4
    untrusted = castore.CheckpointManager(imported.url, "ppo", create=False)
    with pytest.raises(castore.UnsafeLoadError):
        untrusted.load_agent(20)


def test_trainer_state_is_the_optimizers(imported, old_run):
    manager = castore.CheckpointManager(imported.url, "ppo", create=False)
    state = manager.load_trainer_state()
    assert list(state) == ["optimizer_state", "epoch", "agent_step"]
    assert (state["epoch"], state["agent_step"]) == (TRAINER_EPOCH, TRAINER_STEP)
    assert_tree_equal(state["optimizer_state"], old_run.optimizer_state)
    # The state loads back into a fresh optimizer of the same model.
    optimizer = torch.optim.Adam(Agent().parameters(), lr=1e-3)
    optimizer.load_state_dict(state["optimizer_state"])
    assert optimizer.param_groups[0]["lr"] == 1e-2


def test_importing_again_skips_everything_and_writes_no_blobs(old_run, tmp_path):
    url = str(tmp_path / "store")
    import_checkpoints([old_run.root], url, "ppo", trust=True)
    blobs, files = n_blobs(url), store_files(url)
    assert blobs > 0

    again = import_checkpoints([old_run.root], url, "ppo", trust=True)
    expected = []
    for name, kind, epoch, action, reason in expected_report("imported", trusted=True):
        if action == "imported":
            where = "run ppo" if kind == "checkpoint" else "the trainer state"
            action, reason = "skipped", f"epoch {epoch} already in {where}"
        expected.append((name, kind, epoch, action, reason))
    assert rows(again) == expected
    assert again.imported == []
    assert n_blobs(url) == blobs
    assert store_files(url) == files


def test_an_older_trainer_state_is_skipped_not_lost(old_run, tmp_path):
    url = str(tmp_path / "store")
    import_checkpoints([old_run.checkpoints / "trainer_state.pt"], url, "ppo")
    older = tmp_path / "older" / "trainer_state.pt"
    older.parent.mkdir()
    torch.save({"optimizer_state": {"state": {}, "param_groups": []}, "epoch": 3}, older)

    report = import_checkpoints([older], url, "ppo")
    assert rows(report) == [
        (
            "trainer_state.pt",
            "trainer state",
            3,
            "skipped",
            "older than the trainer state of epoch 30; only the latest is kept",
        )
    ]
    state = castore.CheckpointManager(url, "ppo").load_trainer_state()
    assert (state["epoch"], state["agent_step"]) == (TRAINER_EPOCH, TRAINER_STEP)


def test_two_files_of_one_epoch_import_the_first_only(old_run, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    shutil.copyfile(old_run.checkpoints / "model_0010.pt", source / "model_0010.pt")
    other = old_run.states["best.pt"]
    save_file(other, source / "model_0010.safetensors", {"score": "0.5"})
    url = str(tmp_path / "store")
    duplicate = f"epoch 10 is also in {source / 'model_0010.pt'}, which goes first"
    for dry_run, action in ((True, "would import"), (False, "imported")):
        report = import_checkpoints([source], url, "ppo", dry_run=dry_run)
        assert rows(report) == [
            ("model_0010.pt", "checkpoint", 10, action, ""),
            ("model_0010.safetensors", "checkpoint", 10, "skipped", duplicate),
        ]
    run = castore.open(url).run("ppo")
    assert run.epochs() == [10]
    assert_tree_equal(run.load(10)["agent"], old_run.states["model_0010.pt"])


def write_sidecar_cases(source: Path) -> None:
    """model_0001..4.pt, each with a sidecar that is broken in its own way, and a
    policy_0007.pth with a good .yml sidecar."""
    source.mkdir()
    for epoch in range(1, 5):
        torch.save({"w": torch.full((2,), float(epoch))}, source / f"model_{epoch:04d}.pt")
    (source / "model_0001.yaml").write_text("score: [1, 2\nepoch: 3\n")
    (source / "model_0002.json").write_text("{bad json")
    (source / "model_0003.yaml").write_text("- 1\n- 2\n")
    (source / "model_0004.json").write_text(json.dumps({"score": {"nested": 1}}))
    torch.save({"w": torch.arange(3.0)}, source / "policy_0007.pth")
    (source / "policy_0007.yml").write_text("agent_step: 70\nloss: 0.125\n")


SIDECAR_REASONS = [
    "sidecar model_0001.yaml is not valid YAML: expected ',' or ']', but got ':' "
    "at line 2, column 6",
    "sidecar model_0002.json is not valid JSON: Expecting property name enclosed in double "
    "quotes: line 1 column 2 (char 1)",
    "sidecar model_0003.yaml is not a mapping",
]


def test_broken_sidecars_skip_their_checkpoint_with_one_line_reasons(tmp_path):
    write_sidecar_cases(tmp_path / "src")
    url = str(tmp_path / "store")
    report = import_checkpoints([tmp_path / "src"], url, "ppo")
    assert rows(report) == [
        ("model_0001.pt", "checkpoint", 1, "skipped", SIDECAR_REASONS[0]),
        ("model_0002.pt", "checkpoint", 2, "skipped", SIDECAR_REASONS[1]),
        ("model_0003.pt", "checkpoint", 3, "skipped", SIDECAR_REASONS[2]),
        ("model_0004.pt", "checkpoint", 4, "imported", ""),
        ("policy_0007.pth", "checkpoint", 7, "imported", ""),
    ]
    run = castore.open(url).run("ppo")
    assert run.load(4)["metadata"] == {"score": {"nested": 1}}
    assert run.open(4).metrics == {}
    assert (run.open(7).step, run.open(7).metrics) == (70, {"loss": 0.125})
    assert_tree_equal(run.load(7)["agent"], {"w": torch.arange(3.0)})


def test_missing_source_raises_before_writing(tmp_path):
    url = tmp_path / "store"
    with pytest.raises(castore.NotFoundError, match="does not exist"):
        import_checkpoints([tmp_path / "nope"], str(url), "ppo", dry_run=True)
    assert not url.exists()


# ---- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 15, 30])
def test_export_pt_is_the_checkpoint_tree(imported, tmp_path, epoch):
    run = castore.open(imported.url, create=False).run("ppo")
    out = tmp_path / "out.pt"
    result = export_checkpoint(run, epoch, out)
    assert_tree_equal(torch.load(out, weights_only=True), run.load(epoch))
    assert result == castore.ExportResult(str(out), str(tmp_path / "out.json"), 4, 232)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.pt"]


def test_export_pt_of_a_whole_module_is_its_state_dict(imported, old_run, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    export_checkpoint(run, 20, tmp_path / "agent.pt")
    loaded = torch.load(tmp_path / "agent.pt", weights_only=True)
    assert list(loaded) == ["agent", "metadata"]
    assert_tree_equal(dict(loaded["agent"]), dict(old_run.agent.state_dict()))
    assert loaded["metadata"] == {}


@pytest.mark.parametrize("epoch", [0, 20, 30])
def test_export_safetensors_has_the_checkpoint_names(imported, tmp_path, epoch):
    run = castore.open(imported.url, create=False).run("ppo")
    out = tmp_path / "out.safetensors"
    export_checkpoint(run, epoch, out)
    checkpoint = run.open(epoch)
    names = ["agent.net.0.weight", "agent.net.0.bias", "agent.net.2.weight", "agent.net.2.bias"]
    assert sorted(checkpoint.keys()) == sorted(names)
    assert_tree_equal(by_name(load_file(out)), by_name({name: checkpoint[name] for name in names}))
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata() == {"castore.run": "ppo", "castore.epoch": str(epoch)}


def test_export_latest_when_no_epoch(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    export_checkpoint(run, None, tmp_path / "latest.pt")
    assert json.loads((tmp_path / "latest.json").read_text())["epoch"] == 30
    assert_tree_equal(torch.load(tmp_path / "latest.pt", weights_only=True), run.load(30))


def test_export_sidecar_describes_the_checkpoint(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    export_checkpoint(run, 10, tmp_path / "out.safetensors")
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "uri": checkpoint_uri(run.store, "ppo", 10),
        "run": "ppo",
        "epoch": 10,
        "step": 1100,
        "created_at": run.record(10).created_at.isoformat(),
        "metrics": {"avg_reward": 2.0, "score": 0.5, "total_time": 7.25},
        "metadata": {**SIDECARS[10], "run": RUN_LABEL},
        "keys": None,
        "tensors": 4,
    }


def test_export_keys_selects_a_subset(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    keys = ["agent.net.0.*", "metadata.score"]
    result = export_checkpoint(run, 0, tmp_path / "sub.safetensors", keys=keys)
    assert (result.tensors, result.nbytes) == (2, 4 * (8 * 4 + 8))
    full = run.load(0)
    assert_tree_equal(
        by_name(load_file(tmp_path / "sub.safetensors")),
        {
            "agent.net.0.bias": full["agent"]["net.0.bias"],
            "agent.net.0.weight": full["agent"]["net.0.weight"],
        },
    )
    export_checkpoint(run, 0, tmp_path / "sub_pt.pt", keys=keys)
    loaded = torch.load(tmp_path / "sub_pt.pt", weights_only=True)
    assert list(loaded) == ["agent", "metadata"]
    assert list(loaded["agent"]) == ["net.0.weight", "net.0.bias"]
    assert torch.equal(loaded["agent"]["net.0.weight"], full["agent"]["net.0.weight"])
    assert loaded["metadata"] == {"score": 0.25}
    assert json.loads((tmp_path / "sub.json").read_text())["keys"] == keys
    assert json.loads((tmp_path / "sub_pt.json").read_text())["tensors"] == 2


def test_tied_tensors_export_as_equal_separate_tensors(tmp_path):
    run = castore.open(str(tmp_path / "store")).run("tied")
    shared = torch.arange(6.0).reshape(2, 3)
    base = torch.arange(10, dtype=torch.int32)
    state = {
        "enc": {"w": shared},
        "dec": {"w": shared},
        "t": shared.t(),
        "lo": base[:4],
        "hi": base[4:],
    }
    run.save(state, epoch=1, step=9, metrics={"loss": 0.5})

    export_checkpoint(run, 1, tmp_path / "tied.safetensors")
    loaded = load_file(tmp_path / "tied.safetensors")
    assert sorted(loaded) == ["dec.w", "enc.w", "hi", "lo", "t"]
    assert_tree_equal(loaded["enc.w"], shared)
    assert_tree_equal(loaded["dec.w"], shared)
    assert_tree_equal(loaded["t"], shared.t().contiguous())
    assert_tree_equal(loaded["lo"], base[:4])
    assert_tree_equal(loaded["hi"], base[4:])
    assert loaded["enc.w"].data_ptr() != loaded["dec.w"].data_ptr()
    loaded["enc.w"].add_(1)
    assert torch.equal(loaded["dec.w"], shared)

    export_checkpoint(run, 1, tmp_path / "tied.pt", overwrite=True)
    as_pt = torch.load(tmp_path / "tied.pt", weights_only=True)
    assert_tree_equal(as_pt, state)
    assert as_pt["enc"]["w"].data_ptr() == as_pt["dec"]["w"].data_ptr()


def test_export_refuses_to_overwrite_without_overwrite(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    out, sidecar = tmp_path / "out.pt", tmp_path / "out.json"
    out.write_bytes(b"precious")
    with pytest.raises(castore.InvalidCheckpointError, match="exists; overwrite=True"):
        export_checkpoint(run, 0, out)
    assert out.read_bytes() == b"precious"
    assert not sidecar.exists()

    out.unlink()
    sidecar.write_text("{}")
    with pytest.raises(castore.InvalidCheckpointError, match=r"out\.json' exists"):
        export_checkpoint(run, 0, out)
    assert not out.exists()
    assert sidecar.read_text() == "{}"

    out.write_bytes(b"precious")
    export_checkpoint(run, 0, out, overwrite=True)
    assert_tree_equal(torch.load(out, weights_only=True), run.load(0))
    assert json.loads(sidecar.read_text())["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "out.pt"]


@pytest.mark.parametrize("name", ["out.bin", "out.pth", "out"])
def test_export_refuses_other_extensions(imported, tmp_path, name):
    run = castore.open(imported.url, create=False).run("ppo")
    with pytest.raises(castore.InvalidCheckpointError, match=r"must end in \.pt or \.safetensors"):
        export_checkpoint(run, 0, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_missing_directory_is_refused(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    out = tmp_path / "no" / "out.safetensors"
    message = f"cannot export to {str(out)!r}: directory {str(out.parent)!r} does not exist"
    with pytest.raises(castore.InvalidCheckpointError) as caught:
        export_checkpoint(run, 0, out)
    assert str(caught.value) == message
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_missing_epoch_writes_nothing(imported, tmp_path):
    run = castore.open(imported.url, create=False).run("ppo")
    with pytest.raises(castore.NotFoundError):
        export_checkpoint(run, 7, tmp_path / "out.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_then_import_gives_the_checkpoints_back(imported, tmp_path, suffix):
    source = castore.open(imported.url, create=False).run("ppo")
    exported = tmp_path / "exported"
    exported.mkdir()
    for epoch in (0, 10, 15):
        export_checkpoint(source, epoch, exported / f"model_{epoch:04d}{suffix}")
    url = str(tmp_path / "store")
    report = import_checkpoints([exported], url, "back")
    assert [(i.epoch, i.action) for i in report.items] == [
        (0, "imported"),
        (10, "imported"),
        (15, "imported"),
    ]
    assert [i.path for i in report.items if i.kind == "sidecar"] == []

    back = castore.open(url).run("back")
    assert back.epochs() == [0, 10, 15]
    for epoch in (0, 10, 15):
        assert back.open(epoch).metrics == source.open(epoch).metrics
        assert back.record(epoch).step == source.record(epoch).step
        if suffix == ".pt":
            assert_tree_equal(back.load(epoch), source.load(epoch))
        else:
            tensors = {name: source.open(epoch)[name] for name in source.open(epoch)}
            assert_tree_equal(by_name(back.load(epoch)["agent"]), by_name(tensors))


# ---- property -----------------------------------------------------------------------------

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int8,
    torch.uint8,
]
SHAPES = [(), (0,), (5,), (2, 3), (3, 1, 2)]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=generator, dtype=dtype)


STATES = st.dictionaries(
    st.text("abcdefgh_", min_size=1, max_size=6), tensors(), min_size=1, max_size=5
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state=STATES)
def test_exports_load_back_bit_identical(tmp_path, state):
    store = castore.open(str(tmp_path / "store"))
    run = store.run("prop")
    epoch = len(run.epochs())
    run.save(state, epoch=epoch)
    out = tmp_path / f"e{epoch}"
    export_checkpoint(run, epoch, out.with_suffix(".pt"))
    export_checkpoint(run, epoch, out.with_name(f"s{epoch}.safetensors"))
    assert_tree_equal(torch.load(out.with_suffix(".pt"), weights_only=True), state)
    assert_tree_equal(by_name(load_file(out.with_name(f"s{epoch}.safetensors"))), by_name(state))
