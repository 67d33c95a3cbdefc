"""``castore import`` and ``castore export`` in-process: report lines, exit codes, JSON."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file

import castore
from castore.cli.main import main
from castore.cli.render import human_bytes
from tests.api.test_import_export import (
    CORRUPT,
    NO_EPOCH,
    SIDECAR_REASONS,
    TRUST_REASON,
    OldRun,
    assert_tree_equal,
    by_name,
    write_old_run,
    write_sidecar_cases,
)

if TYPE_CHECKING:
    from pathlib import Path

STATE_BYTES = 232  # the MLP's four float32 tensors
TRAINER_BYTES = 2 * STATE_BYTES + 4 * 4  # Adam's two moments and four 0-d steps
GOOD_FILES = ["model_0000.pt", "model_0010.pt", "model_0030.safetensors", "trainer_state.pt"]


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def old_run(tmp_path_factory: pytest.TempPathFactory) -> OldRun:
    return write_old_run(tmp_path_factory.mktemp("old"))


@pytest.fixture(scope="module")
def store_url(old_run: OldRun, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run 'ppo' with epochs 0, 10 and 30 (latest), for the export tests to read."""
    url = str(tmp_path_factory.mktemp("cli") / "store")
    castore.import_checkpoints([old_run.checkpoints / name for name in GOOD_FILES], url, "ppo")
    return url


def report_line(path: Path, kind: str, epoch: int | None, action: str, new: int, why: str) -> str:
    """A regex for one row of the import table (columns are padded to align)."""
    cells = [
        re.escape(str(path)),
        f"(?P<kind>{kind})",
        f"(?P<epoch>{'-' if epoch is None else epoch})",
        f"(?P<action>{action})",
        re.escape(human_bytes(new)),
    ]
    if why:
        cells.append(re.escape(why))
    return r"\s+".join(cells)


def assert_table(out: str, expected: list[str], summary: str) -> None:
    """Header, one aligned row per file (left-aligned text, right-aligned epochs), summary."""
    header, *rows, blank, last = out.splitlines()
    assert header.split() == ["file", "kind", "epoch", "action", "new", "why"]
    assert len(rows) == len(expected)
    for row, pattern in zip(rows, expected, strict=True):
        match = re.fullmatch(pattern, row)
        assert match is not None, (row, pattern)
        assert match.start("kind") == header.index("kind")
        assert match.end("epoch") == header.index("epoch") + len("epoch")
        assert match.start("action") == header.index("action")
    assert blank == ""
    assert last == summary


def full_table(ckpt: Path, action: str, new: int) -> list[str]:
    return [
        report_line(ckpt / "latest.pt", "checkpoint", None, "skipped", 0, NO_EPOCH),
        report_line(ckpt / "model_0000.pt", "checkpoint", 0, action, new, ""),
        report_line(ckpt / "model_0010.pt", "checkpoint", 10, action, new, ""),
        report_line(ckpt / "model_0011.pt", "checkpoint", 11, action, 0, ""),
        report_line(ckpt / "best.pt", "checkpoint", 15, action, new, ""),
        report_line(ckpt / "model_0020.pt", "checkpoint", 20, "skipped", 0, TRUST_REASON),
        report_line(ckpt / "model_0030.safetensors", "checkpoint", 30, action, new, ""),
        report_line(ckpt / "model_0050.pt", "checkpoint", 50, "skipped", 0, CORRUPT),
        report_line(
            ckpt / "model_0040.yaml", "sidecar", None, "skipped", 0, "no checkpoint file beside it"
        ),
        report_line(
            ckpt / "trainer_state.pt",
            "trainer state",
            30,
            action,
            TRAINER_BYTES if new else 0,
            "",
        ),
    ]


# ---- import -------------------------------------------------------------------------------


def test_import_prints_each_file_and_exits_1_for_unreadable_ones(capsys, old_run, tmp_path):
    url = tmp_path / "store"
    code, out, err = run_cli(capsys, "import", old_run.root, url, "--run", "ppo")
    assert (code, err) == (1, "")
    new = 4 * STATE_BYTES + TRAINER_BYTES
    summary = f"imported 6, skipped 4; {human_bytes(new)} new in the store"
    assert_table(out, full_table(old_run.checkpoints, "imported", STATE_BYTES), summary)
    assert castore.open(str(url)).run("ppo").epochs() == [0, 10, 11, 15, 30]


def test_import_dry_run_writes_nothing(capsys, old_run, tmp_path):
    url = tmp_path / "store"
    code, out, err = run_cli(capsys, "import", old_run.root, url, "--run", "ppo", "--dry-run")
    assert (code, err) == (1, "")
    assert_table(
        out, full_table(old_run.checkpoints, "would import", 0), "would import 6, skipped 4"
    )
    assert not url.exists()


def test_import_json(capsys, old_run, tmp_path):
    url = tmp_path / "store"
    sources = [old_run.checkpoints / "model_0010.pt", old_run.checkpoints / "model_0020.pt"]
    code, out, err = run_cli(capsys, "import", *sources, url, "--run", "ppo", "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "run": "ppo",
        "dry_run": False,
        "items": [
            {
                "path": str(sources[0]),
                "kind": "checkpoint",
                "epoch": 10,
                "action": "imported",
                "new_bytes": STATE_BYTES,
                "reason": "",
            },
            {
                "path": str(sources[1]),
                "kind": "checkpoint",
                "epoch": 20,
                "action": "skipped",
                "new_bytes": 0,
                "reason": TRUST_REASON,
            },
        ],
    }
    code, out, _ = run_cli(capsys, "import", *sources, url, "--run", "ppo", "--json", "--trust")
    assert code == 0
    assert [(i["epoch"], i["action"], i["reason"]) for i in json.loads(out)["items"]] == [
        (10, "skipped", "epoch 10 already in run ppo"),
        (20, "imported", ""),
    ]
    assert castore.open(str(url)).run("ppo").epochs() == [10, 20]


def test_import_exits_0_when_skips_are_only_already_there(capsys, old_run, tmp_path):
    url = tmp_path / "store"
    sources = [old_run.checkpoints / name for name in GOOD_FILES]
    code, out, err = run_cli(capsys, "import", *sources, url, "--run", "ppo")
    assert (code, err) == (0, "")
    new = 3 * STATE_BYTES + TRAINER_BYTES
    assert out.splitlines()[-1] == f"imported 4, skipped 0; {human_bytes(new)} new in the store"

    blobs = sorted((url / "blobs").rglob("*"))
    code, out, err = run_cli(capsys, "import", *sources, url, "--run", "ppo", "--json")
    assert (code, err) == (0, "")
    assert [(i["epoch"], i["action"], i["reason"]) for i in json.loads(out)["items"]] == [
        (0, "skipped", "epoch 0 already in run ppo"),
        (10, "skipped", "epoch 10 already in run ppo"),
        (30, "skipped", "epoch 30 already in run ppo"),
        (30, "skipped", "epoch 30 already in the trainer state"),
    ]
    assert sorted((url / "blobs").rglob("*")) == blobs


def test_import_of_an_orphan_sidecar_alone_exits_0(capsys, old_run, tmp_path):
    url = tmp_path / "store"
    code, out, err = run_cli(
        capsys, "import", old_run.checkpoints / "model_0040.yaml", url, "--run", "ppo"
    )
    assert (code, err) == (0, "")
    assert "no checkpoint file beside it" in out.splitlines()[1]
    assert out.splitlines()[-1] == "imported 0, skipped 1; 0 B new in the store"


def test_import_reasons_stay_on_their_row(capsys, tmp_path):
    source = tmp_path / "src"
    write_sidecar_cases(source)
    code, out, err = run_cli(capsys, "import", source, tmp_path / "store", "--run", "ppo")
    assert (code, err) == (1, "")
    expected = [
        report_line(source / f"model_000{epoch}.pt", "checkpoint", epoch, "skipped", 0, why)
        for epoch, why in enumerate(SIDECAR_REASONS, start=1)
    ]
    expected.append(report_line(source / "model_0004.pt", "checkpoint", 4, "imported", 8, ""))
    expected.append(report_line(source / "policy_0007.pth", "checkpoint", 7, "imported", 12, ""))
    assert_table(out, expected, "imported 2, skipped 3; 20 B new in the store")


def test_import_of_a_missing_source_is_one_line(capsys, tmp_path):
    missing = tmp_path / "nope"
    code, out, err = run_cli(capsys, "import", missing, tmp_path / "store", "--run", "ppo")
    assert (code, out) == (1, "")
    assert err == f"castore: error: import source {str(missing)!r} does not exist\n"


def test_import_needs_a_run(capsys, old_run, tmp_path):
    code, out, err = run_cli(capsys, "import", old_run.root, tmp_path / "store")
    assert (code, out) == (2, "")
    assert err.splitlines()[-1].endswith("the following arguments are required: --run")
    assert not (tmp_path / "store").exists()


# ---- export -------------------------------------------------------------------------------


def test_export_run_at_epoch(capsys, store_url, tmp_path):
    out = tmp_path / "e10.pt"
    code, stdout, err = run_cli(capsys, "export", store_url, "ppo@10", out)
    assert (code, err) == (0, "")
    assert stdout == f"wrote {out} (4 tensors, 232 B) and {tmp_path / 'e10.json'}\n"
    run = castore.open(store_url).run("ppo")
    assert_tree_equal(torch.load(out, weights_only=True), run.load(10))
    assert json.loads((tmp_path / "e10.json").read_text())["epoch"] == 10


def test_export_latest_as_json(capsys, store_url, tmp_path):
    out = tmp_path / "latest.safetensors"
    code, stdout, err = run_cli(capsys, "export", store_url, "ppo", out, "--json")
    assert (code, err) == (0, "")
    assert json.loads(stdout) == {
        "path": str(out),
        "sidecar": str(tmp_path / "latest.json"),
        "tensors": 4,
        "nbytes": STATE_BYTES,
    }
    checkpoint = castore.open(store_url).run("ppo").open(30)
    assert_tree_equal(by_name(load_file(out)), by_name({k: checkpoint[k] for k in checkpoint}))
    sidecar = json.loads((tmp_path / "latest.json").read_text())
    assert (sidecar["run"], sidecar["epoch"], sidecar["metrics"]) == ("ppo", 30, {"score": 0.875})


def test_export_keys_are_repeatable(capsys, store_url, tmp_path):
    out = tmp_path / "sub.safetensors"
    argv = ["export", store_url, "ppo@0", out, "--keys", "agent.net.0.*"]
    code, stdout, _ = run_cli(capsys, *argv, "--keys", "agent.net.2.bias", "--json")
    assert code == 0
    assert json.loads(stdout)["tensors"] == 3
    assert json.loads(stdout)["nbytes"] == 4 * (8 * 4 + 8 + 2)
    assert sorted(load_file(out)) == ["agent.net.0.bias", "agent.net.0.weight", "agent.net.2.bias"]
    sidecar = json.loads((tmp_path / "sub.json").read_text())
    assert sidecar["keys"] == ["agent.net.0.*", "agent.net.2.bias"]


def test_export_refuses_an_existing_file_unless_forced(capsys, store_url, tmp_path):
    out = tmp_path / "out.pt"
    assert run_cli(capsys, "export", store_url, "ppo@10", out)[0] == 0
    first = out.read_bytes()

    code, stdout, err = run_cli(capsys, "export", store_url, "ppo@0", out)
    assert (code, stdout) == (1, "")
    assert err == (
        f"castore: error: {str(out)!r} exists; overwrite=True (castore export --force) "
        "replaces it\n"
    )
    assert out.read_bytes() == first

    code, _, err = run_cli(capsys, "export", store_url, "ppo@0", out, "--force")
    assert (code, err) == (0, "")
    run = castore.open(store_url).run("ppo")
    assert_tree_equal(torch.load(out, weights_only=True), run.load(0))
    assert json.loads((tmp_path / "out.json").read_text())["epoch"] == 0


@pytest.mark.parametrize("target", ["ppo@x", "ppo@", "@3", "ppo@-1", "ppo@1@2"])
def test_a_bad_target_is_a_usage_error(capsys, store_url, tmp_path, target):
    code, out, err = run_cli(capsys, "export", store_url, target, tmp_path / "out.pt")
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == (
        f"castore export: error: argument RUN[@EPOCH]: expected RUN or RUN@EPOCH, got {target!r}"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("target", "name", "message"),
    [
        ("nope", "out.pt", "run 'nope' has no checkpoints; 'castore ls STORE' lists the runs"),
        ("ppo@7", "out.pt", "run 'ppo' has no checkpoint at epoch 7"),
        ("ppo@0", "out.npz", "the name must end in .pt or .safetensors"),
        ("ppo@0", "no/out.pt", "directory"),
    ],
)
def test_export_errors_are_one_line(capsys, store_url, tmp_path, target, name, message):
    code, out, err = run_cli(capsys, "export", store_url, target, tmp_path / name)
    assert (code, out) == (1, "")
    assert err.startswith("castore: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_export_from_a_missing_store_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "missing"
    code, out, err = run_cli(capsys, "export", missing, "ppo", tmp_path / "out.pt")
    assert (code, out) == (1, "")
    assert err.startswith("castore: error: ")
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
