"""The storage benchmark still trains, saves, reloads and prints every table row.

Tiny models and three checkpoints per run (``--smoke``), so it cannot rot; its figures
mean nothing; the numbers come from ``benchmarks/storage.py`` at full size.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

STORAGE_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "storage.py"

RUNS = ["rl-ppo", "rl-ppo-policy", "lm", "lm-finetune", "lm-finetune-shared"]
CHECKPOINTS = 3


def test_smoke_benchmark_prints_every_row(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(STORAGE_PY), "--smoke", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout

    body, summary = out.split("\nsummary ")
    sections = re.split(r"\n\n(?=[\w-]+: )", body)[1:]
    assert [s.split(":")[0] for s in sections] == RUNS, out
    for section in sections:
        assert "the last one reloaded bit for bit" in section
        rows = [line.split()[0] for line in section.splitlines()[4:]]
        assert rows == [*map(str, range(CHECKPOINTS)), "total"], section

    lines = summary.splitlines()
    assert [line.split()[0] for line in lines[3 : 3 + len(RUNS)]] == RUNS, summary
    for line in lines[3 : 3 + len(RUNS)]:
        assert f" {CHECKPOINTS} " in line
        assert "<= 0." in line
    assert list(tmp_path.iterdir()) == []
