"""``castore retain | gc | verify | diff`` in-process: exit codes, tables and JSON."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest
import torch

from castore.blobstore.layout import blob_key
from castore.cli import maintenance
from castore.cli.main import main
from castore.cli.maintenance import parse_duration
from tests.maintenance.helpers import flip_last_byte, open_store


@pytest.fixture
def store_path(tmp_path) -> str:
    """Run 'ppo', epochs 0-3 with scores; one tensor changes each epoch."""
    path = str(tmp_path / "store")
    store = open_store(path)
    w = torch.arange(4096.0)
    for epoch, score in enumerate([0.5, 0.9, 0.7, 0.6]):
        w[epoch] = -1.0
        state = {"w": w, "frozen": torch.ones(4096), "b": torch.full((3,), float(epoch))}
        store.run("ppo").save(state, epoch=epoch, metrics={"score": score})
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_retain_dry_run_then_for_real(capsys, store_path):
    argv = ["retain", store_path, "ppo", "--keep-last", "1", "--keep-best", "1"]
    code, out, err = run_cli(capsys, *argv, "--dry-run")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "score", "action", "why"]
    assert lines[1].split() == ["0", "0.5", "forget"]
    assert lines[2].split()[:3] == ["1", "0.9", "keep"]
    assert "would forget 2 of 4 checkpoints (epochs: 0, 2)" in out
    assert open_store(store_path).run("ppo").epochs() == [0, 1, 2, 3]

    code, out, _ = run_cli(capsys, *argv, "--json")
    plan = json.loads(out)
    assert (plan["run"], plan["dry_run"]) == ("ppo", False)
    assert [d["keep"] for d in plan["decisions"]] == [False, True, False, True]
    assert plan["decisions"][3]["reasons"] == ["last 1"]
    assert open_store(store_path).run("ppo").epochs() == [1, 3]


def test_gc_two_passes(capsys, store_path):
    assert run_cli(capsys, "retain", store_path, "ppo", "--keep-last", "1")[0] == 0
    code, out, _ = run_cli(capsys, "gc", store_path, "--grace", "0", "--dry-run")
    assert code == 0
    assert out.splitlines()[1].startswith("would delete  0 blobs")
    code, out, _ = run_cli(capsys, "gc", store_path, "--grace", "0", "--json")
    first = json.loads(out)
    assert first["pending_blobs"] > 0
    assert first["deleted_blobs"] == 0
    code, out, _ = run_cli(capsys, "gc", store_path, "--grace=0s")
    assert code == 0
    assert out.splitlines()[1].split()[:3] == ["deleted", str(first["pending_blobs"]), "blobs"]
    assert run_cli(capsys, "verify", store_path)[0] == 0


def test_verify_damage_exits_1_and_repair_from_a_replica_fixes_it(capsys, store_path, tmp_path):
    replica = str(tmp_path / "replica")
    Path(replica).mkdir()
    store = open_store(store_path)
    store.location.fs.copy(f"{store_path}/blobs", f"{replica}/blobs", recursive=True)
    ref = store.run("ppo").record(2).tensors[0]
    lost, flipped = ref.chunks[0].digest, store.run("ppo").record(0).tensors[1].chunks[0].digest
    store.location.delete(blob_key(lost))
    flip_last_byte(store, flipped)

    code, out, err = run_cli(capsys, "verify", store_path)
    assert (code, err) == (1, "")
    assert "2 blobs missing or corrupt" in out
    assert f"{lost[:12]}…  missing" in out
    assert "ppo      2  frozen, w" in out

    code, out, _ = run_cli(capsys, "verify", store_path, "ppo", "--json")
    report = json.loads(out)
    assert report["ok"] is False
    assert {p["kind"] for p in report["problems"]} == {"missing", "corrupt"}
    assert {"run": "ppo", "epoch": 2, "tensors": ["frozen", "w"]} in report["affected"]

    code, out, _ = run_cli(capsys, "verify", store_path, "--repair-from", replica)
    assert code == 0
    assert "repaired 2 blobs from" in out
    assert run_cli(capsys, "verify", store_path)[1].endswith("no problems\n")


def test_verify_repair_from_a_source_without_the_blob_exits_1(capsys, store_path, tmp_path):
    store = open_store(store_path)
    lost = store.run("ppo").record(3).tensors[0].chunks[0].digest
    store.location.delete(blob_key(lost))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run_cli(capsys, "verify", store_path, "--repair-from", str(empty), "--json")
    assert code == 1
    assert json.loads(out)["repair"]["failed"] == [
        {"digest": lost, "reason": "not in the source either"}
    ]


def test_diff_table_and_json(capsys, store_path):
    code, out, _ = run_cli(capsys, "diff", store_path, "ppo@0", "ppo@2")
    assert code == 0
    assert "changed    2 tensors" in out
    assert "unchanged  1 tensor" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-2:]}
    assert rows["w"][-1] == "3"  # w[1] and w[2] became -1: w[2] moved by 3
    code, out, _ = run_cli(capsys, "diff", store_path, "ppo@0", "ppo@2", "--json")
    diff = json.loads(out)
    assert [c["name"] for c in diff["changed"]] == ["b", "w"]
    assert diff["a"] == ["ppo", 0]


@pytest.mark.parametrize(
    "argv",
    [
        ["diff", "s", "ppo", "ppo@1"],
        ["gc", "s", "--grace", "an hour"],
        ["retain", "s", "ppo", "--keep-last", "-1"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert "usage: castore" in err


def test_errors_are_one_line(capsys, store_path):
    code, out, err = run_cli(capsys, "verify", store_path, "nope")
    assert (code, out) == (1, "")
    assert err.startswith("castore: error: run 'nope' has no checkpoints")
    code, _, err = run_cli(capsys, "retain", store_path, "ppo", "--keep-best", "1", "--metric", "x")
    assert code == 1
    assert "has a value for 'x'; nothing was forgotten" in err
    assert open_store(store_path).run("ppo").epochs() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("1h", 3600.0)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_refuses_nonsense():
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("-1h")


def test_the_module_imports_no_heavy_layer():
    for node in ast.parse(Path(maintenance.__file__).read_text()).body:
        if isinstance(node, ast.ImportFrom):
            assert node.module.startswith(("castore.cli", "__future__", "dataclasses", "typing"))
