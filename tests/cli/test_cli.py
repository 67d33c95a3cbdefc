"""The ``castore`` command in-process: exit codes, one-line errors, tables and JSON."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import castore
from castore.cli import commands, render
from castore.cli import main as main_module
from castore.cli.main import main
from castore.cli.render import human_bytes


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    """Run 'ppo' (3 epochs: one chunk of big's four changes each time), 'other' (1 epoch)."""
    url = str(tmp_path_factory.mktemp("cli") / "store")
    store = castore.open(
        url, chunking=castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)
    )
    big = torch.arange(4096.0)
    frozen = torch.arange(2048.0) + 0.5
    storage = torch.arange(12.0)
    state = {"big": big, "frozen": frozen, "a": storage[:6], "b": storage[6:], "tied": big}
    run = store.run("ppo")
    for epoch, (score, loss) in enumerate([(0.5, 2.0), (0.9, 1.25), (0.7, 0.5)]):
        big[0] = epoch
        run.save(state, epoch=epoch, step=100 * epoch, metrics={"score": score, "loss": loss})
    store.run("other").save({"w": torch.ones(8)}, epoch=5, metrics={"score": 0.1})
    return url


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_store_table(capsys, store_url):
    code, out, err = run_cli(capsys, "ls", store_url)
    assert code == 0
    assert err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["run", "checkpoints", "latest", "logical", "new", "stored"]
    assert [row.split()[:3] for row in rows] == [["other", "1", "5"], ["ppo", "3", "2"]]


def test_ls_store_json(capsys, store_url):
    code, out, _ = run_cli(capsys, "ls", store_url, "--json")
    assert code == 0
    runs = {row["run"]: row for row in json.loads(out)}
    table = castore.open(store_url).run("ppo").summary_table()
    assert runs["ppo"]["checkpoints"] == 3
    assert runs["ppo"]["latest_epoch"] == 2
    assert runs["ppo"]["logical_bytes"] == sum(table.column("logical_bytes").to_pylist())
    assert runs["ppo"]["new_bytes"] == sum(table.column("new_bytes").to_pylist())
    assert isinstance(runs["other"]["stored_bytes"], int)


def test_ls_empty_store(capsys, tmp_path):
    url = str(tmp_path / "empty")
    castore.open(url)
    assert run_cli(capsys, "ls", url) == (0, "no runs\n", "")
    assert run_cli(capsys, "ls", url, "--json") == (0, "[]\n", "")


def test_ls_run_table_is_aligned(capsys, store_url):
    code, out, _ = run_cli(capsys, "ls", store_url, "ppo")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "step", "loss", "score", "logical", "new", "stored"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["0", "0", "2", "0.5"],
        ["1", "100", "1.25", "0.9"],
        ["2", "200", "0.5", "0.7"],
    ]
    assert len({len(line) for line in lines}) == 1  # right-aligned last column
    assert "KiB" in lines[1]


def test_ls_run_json(capsys, store_url):
    code, out, _ = run_cli(capsys, "ls", store_url, "ppo", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert [row["step"] for row in rows] == [0, 100, 200]
    assert rows[1]["metrics"] == {"loss": 1.25, "score": 0.9}
    assert rows[0]["parent_epoch"] is None
    assert rows[1]["new_bytes"] < rows[0]["new_bytes"] == rows[0]["logical_bytes"]


def test_show_latest_marks_new_and_shared_chunks(capsys, store_url):
    code, out, _ = run_cli(capsys, "show", store_url, "ppo", "--json")
    assert code == 0
    shown = json.loads(out)
    assert (shown["epoch"], shown["parent_epoch"], shown["step"]) == (2, 1, 200)
    assert shown["metrics"] == {"loss": 0.5, "score": 0.7}
    tensors = {t["name"]: t for t in shown["tensors"]}
    assert tensors["big"]["chunks"] == 4
    assert tensors["big"]["new_chunks"] == 1
    assert tensors["big"]["status"] == "1/4 new"
    assert tensors["big"]["bytes"] == 4096 * 4
    assert tensors["frozen"]["status"] == "shared"
    assert tensors["tied"]["status"] == "alias of big"
    assert tensors["a"]["role"] == "view"
    assert shown["storage_entries"] == 1
    assert not any(t["role"] == "storage" for t in shown["tensors"])


def test_show_epoch_table(capsys, store_url):
    code, out, _ = run_cli(capsys, "show", store_url, "ppo", "0")
    assert code == 0
    assert "epoch    0" in out
    assert "parent   -" in out
    big = next(line for line in out.splitlines() if line.startswith("big "))
    assert big.split() == ["big", "f32", "[4096]", "16.0", "KiB", "4", "new"]
    assert "1 storage entries behind views not listed" in out


def test_show_names_objects_saved_whole(capsys, tmp_path):
    url = str(tmp_path / "store")
    castore.open(url).run("agents").save(
        {"agent": torch.nn.Linear(2, 2), "epoch": 3}, epoch=0, pickle=True
    )
    code, out, _ = run_cli(capsys, "show", url, "agents", "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["pickled"] == [{"path": "agent", "class": "torch.nn.modules.linear.Linear"}]
    assert [t["name"] for t in shown["tensors"]] == ["agent.weight", "agent.bias"]
    code, out, _ = run_cli(capsys, "show", url, "agents")
    line = next(line for line in out.splitlines() if line.startswith("pickled"))
    assert line.split(None, 1)[1] == (
        "agent (torch.nn.modules.linear.Linear): loading needs trust=True"
    )
    code, out, _ = run_cli(capsys, "show", store_url_without_pickles(tmp_path), "r", "--json")
    assert json.loads(out)["pickled"] == []


def store_url_without_pickles(tmp_path: Path) -> str:
    url = str(tmp_path / "plain")
    castore.open(url).run("r").save({"w": torch.ones(2)}, epoch=0)
    return url


def test_best_highest_first(capsys, store_url):
    code, out, _ = run_cli(capsys, "best", store_url, "ppo", "--metric", "score", "-n", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["rank", "epoch"]
    assert [line.split()[:2] for line in lines[1:]] == [["1", "1"], ["2", "2"]]


def test_best_lowest_first_json(capsys, store_url):
    code, out, _ = run_cli(capsys, "best", store_url, "ppo", "--metric=-loss", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(row["rank"], row["epoch"]) for row in rows] == [(1, 2), (2, 1), (3, 0)]
    assert rows[0]["metrics"]["loss"] == 0.5


def test_best_unknown_metric_is_one_line(capsys, store_url):
    code, out, err = run_cli(capsys, "best", store_url, "ppo", "--metric", "reward")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("castore: error: no checkpoint has metric 'reward'")


def test_query_table_and_json(capsys, store_url):
    sql = "SELECT run, epoch, score FROM checkpoints ORDER BY run, epoch"
    code, out, _ = run_cli(capsys, "query", store_url, sql, "--json")
    assert code == 0
    assert json.loads(out) == [
        {"run": "other", "epoch": 5, "score": 0.1},
        {"run": "ppo", "epoch": 0, "score": 0.5},
        {"run": "ppo", "epoch": 1, "score": 0.9},
        {"run": "ppo", "epoch": 2, "score": 0.7},
    ]
    code, out, _ = run_cli(capsys, "query", store_url, sql)
    assert code == 0
    assert out.splitlines()[2].split() == ["ppo", "0", "0.5"]


def test_query_error_is_one_line(capsys, store_url):
    code, _, err = run_cli(capsys, "query", store_url, "SELECT nope FROM checkpoints")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("castore: error: query failed")


def test_du(capsys, store_url):
    code, out, _ = run_cli(capsys, "du", store_url, "--json")
    assert code == 0
    usage = castore.open(store_url).du()
    assert json.loads(out) == {
        "runs": 2,
        "checkpoints": 4,
        "logical_bytes": usage.logical_bytes,
        "stored_bytes": usage.stored_bytes,
        "blobs": usage.blobs,
        "dedup_ratio": usage.dedup_ratio,
    }
    code, out, _ = run_cli(capsys, "du", store_url)
    assert code == 0
    assert f"dedup ratio  {usage.dedup_ratio:.1f}x" in out
    assert human_bytes(usage.stored_bytes) in out


def test_storage_options_are_passed(capsys, store_url):
    code, out, _ = run_cli(capsys, "ls", store_url, "-o", "auto_mkdir=true", "--json")
    assert code == 0
    assert len(json.loads(out)) == 2


def test_missing_store_is_one_line_and_creates_nothing(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    code, out, err = run_cli(capsys, "ls", str(missing))
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("castore: error: no castore store here")
    assert "Traceback" not in err
    assert not missing.exists()


def test_missing_run_and_epoch(capsys, store_url):
    code, _, err = run_cli(capsys, "ls", store_url, "nope")
    assert code == 1
    assert "run 'nope' has no checkpoints" in err
    code, _, err = run_cli(capsys, "show", store_url, "ppo", "9")
    assert code == 1
    assert err.count("\n") == 1
    assert "no checkpoint at epoch 9" in err


def test_debug_adds_the_traceback(capsys, tmp_path):
    code, _, err = run_cli(capsys, "ls", str(tmp_path / "nowhere"), "--debug")
    assert code == 1
    assert "Traceback" in err
    assert err.splitlines()[-1].startswith("castore: error: no castore store here")


def test_unexpected_error_is_one_line(capsys, store_url, monkeypatch):
    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(commands, "cmd_du", broken)
    code, _, err = run_cli(capsys, "du", store_url)
    assert code == 1
    assert err.splitlines() == [
        "castore: error: unexpected RuntimeError: boom second line; run with --debug for details"
    ]


@pytest.mark.parametrize(
    "argv",
    [[], ["bogus"], ["ls"], ["best", "s", "r"], ["best", "s", "r", "--metric", "x", "-n", "0"]],
)
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "usage: castore" in err


def test_help_exits_0(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for verb in ("ls", "show", "best", "query", "du", "demo"):
        assert verb in out


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (int(12.3 * 2**20), "12.3 MiB")],
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_console_script_help():
    script = Path(sys.executable).parent / "castore"
    command = str(script) if script.exists() else shutil.which("castore")
    assert command is not None, "the castore console script is not installed"
    result = subprocess.run(
        [command, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: castore" in result.stdout


def test_help_imports_neither_torch_nor_pyarrow():
    """``import castore`` is lazy (PEP 562), so the whole CLI parser loads in a blink."""
    code = (
        "import sys, castore, castore.cli.main\n"
        "castore.cli.main.build_parser()\n"
        "heavy = sorted({'torch', 'pyarrow', 'duckdb', 'fsspec'} & set(sys.modules))\n"
        "print(heavy)\n"
        "castore.CheckpointManager\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.split("\n")[:2] == ["[]", "True"]


@pytest.mark.parametrize("module", [main_module, commands, render], ids=lambda m: m.__name__)
def test_parser_modules_import_no_heavy_layer(module):
    """Building the parser must not pull in castore.api, torch, pyarrow or duckdb: the
    commands import them inside their functions. Only module-level imports are checked."""
    light = ("castore.cli", "castore.errors")
    for node in ast.parse(Path(module.__file__).read_text()).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in {"torch", "pyarrow", "pandas", "duckdb", "numpy"}, name
            assert top != "castore" or name.startswith(light), name


def test_follow_prints_each_checkpoint_then_times_out(capsys, tmp_path):
    run = castore.open(str(tmp_path)).run("r")
    for epoch in (0, 10, 20):
        run.save({"w": torch.ones(2)}, epoch=epoch, step=epoch * 5, metrics={"loss": 1.0})
    run.annotate(10, {"score": 0.95})
    argv = ["follow", str(tmp_path), "r", "--poll", "0.01", "--timeout", "0.05"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["0", "10", "20"]
    assert lines[1].split() == ["epoch", "10", "step", "50", "loss=1", "score=0.95"]


def test_follow_json_lines_since(capsys, store_url):
    argv = ["follow", store_url, "ppo", "--json", "--since", "0", "--poll", "0.01"]
    assert main([*argv, "--timeout", "0.05"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[0]["run"] == "ppo"
    assert rows[0]["metrics"] == {"loss": 1.25, "score": 0.9}


def test_follow_rejects_bad_poll(capsys, store_url):
    assert main(["follow", store_url, "ppo", "--poll", "0"]) == 2
    assert "expected a positive number" in capsys.readouterr().err
