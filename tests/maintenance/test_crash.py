"""Crash safety: a saver killed with SIGKILL at random moments never leaves a partial
checkpoint, and the store stays verifiable, collectable and writable afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import castore
from tests.maintenance.crash_saver import CHUNKING, OPTIONS_ENV, RUN, state_for

SCRIPT = Path(__file__).with_name("crash_saver.py")


class Saver:
    """The crash_saver process: forks a child per trial; we kill the child."""

    def __init__(self, url: str, options: dict, log: Path) -> None:
        env = {**os.environ, OPTIONS_ENV: json.dumps(options)}
        self.log = log
        self.child: int | None = None
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            text=True,
        )

    def trial(self, delay_s: float) -> None:
        """Start a child saving in a loop, kill it with SIGKILL after ``delay_s``."""
        self.process.stdin.write("fork\n")
        self.process.stdin.flush()
        lines = sorted(self._line().split() for _ in range(2))  # the child's and ours
        assert lines[1][0] == "ready", lines
        self.child = int(lines[0][1])
        time.sleep(delay_s)
        os.kill(self.child, signal.SIGKILL)
        status = int(self._line().split()[1])
        assert os.WIFSIGNALED(status), f"the saver died on its own:\n{self.log.read_text()}"
        assert os.WTERMSIG(status) == signal.SIGKILL

    def _line(self) -> str:
        line = self.process.stdout.readline()
        assert line, f"crash_saver exited:\n{self.log.read_text()}"
        return line

    def close(self) -> None:
        """End the saver, killing a child a failed trial left running."""
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signal.SIGKILL)
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self._stderr.close()


def assert_exact(loaded: dict, epoch: int) -> None:
    expected = state_for(epoch)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert loaded[key].dtype == value.dtype
            assert torch.equal(loaded[key], value), (epoch, key)
        else:
            assert loaded[key] == value


def save_time_s(url: str, options: dict) -> float:
    """How long one save takes on this backend now, in this warm process: kills are spread
    over a few saves whatever else the machine is doing (a loaded CI box is several times
    slower); a freshly forked saver's first save takes about twice as long."""
    run = castore.open(url, chunking=CHUNKING, **options).run("calibration")
    started = time.perf_counter()
    for epoch in range(3):
        run.save(state_for(epoch), epoch=epoch)
    return (time.perf_counter() - started) / 3


def kill_repeatedly(url: str, options: dict, tmp_path: Path, trials: int, saves: float) -> None:
    """``trials`` kills, each after a random delay of up to ``saves`` save times; more
    kills (up to three times as many) while fewer than a third of them saw a commit, as
    when the children save slower than the calibration (a file system busy with an
    earlier job's deletions), so that kills land both inside and between saves."""
    rng = random.Random(1234)
    longest_s = saves * save_time_s(url, options)
    saver = Saver(url, options, tmp_path / "saver.log")
    reader = castore.open(url, chunking=CHUNKING, **options).run(RUN)
    epochs: list[int] = []
    try:
        for done in range(3 * trials):
            if done >= trials and len(epochs) >= trials // 3:
                break
            saver.trial(rng.uniform(0.0, longest_s))
            epochs = reader.epochs()
            assert epochs == list(range(len(epochs))), "a checkpoint went missing"
            if epochs:
                assert_exact(reader.load(epochs[-1]), epochs[-1])
    finally:
        saver.close()

    store = castore.open(url, chunking=CHUNKING, **options)
    run = store.run(RUN)
    epochs = run.epochs()
    assert len(epochs) >= trials // 3, "the saver hardly ever committed: delays too short"
    for epoch in epochs:
        assert_exact(run.load(epoch), epoch)
        assert run.open(epoch).metrics == {"score": float(epoch)}
    assert store.verify().ok

    # Leftovers of killed saves (blobs, local temporary files) go in two gc passes.
    now = time.time()
    first = store.gc(grace_s=0, now=now)
    second = store.gc(grace_s=0, now=now + 1)
    assert second.deleted_blobs == first.pending_blobs
    assert second.deleted_temporaries == first.pending_temporaries
    assert store.verify().ok
    assert store.gc(grace_s=0, dry_run=True).pending_blobs == 0

    # The run goes on: the next epoch saves and loads.
    run.save(state_for(len(epochs)), epoch=len(epochs), metrics={"score": float(len(epochs))})
    assert_exact(run.load(), len(epochs))


def test_sigkill_during_saves_on_local_disk(tmp_path):
    kill_repeatedly(str(tmp_path / "store"), {}, tmp_path, trials=30, saves=6.0)


def test_sigkill_during_saves_on_s3(s3_server, tmp_path):
    url = s3_server.url(f"crash-{os.getpid()}-{time.time_ns()}")
    options = dict(s3_server.storage_options)
    kill_repeatedly(url, options, tmp_path, trials=30, saves=6.0)


@pytest.mark.parametrize("epoch", [0, 3])
def test_state_for_is_deterministic(epoch):
    assert_exact(state_for(epoch), epoch)
