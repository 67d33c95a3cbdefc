"""``benchmarks/follow.py`` still saves, follows and loads (tiny state, one attempt).

Its figures mean nothing at this size; the numbers come from the benchmark itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FOLLOW_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "follow.py"


def test_follow_benchmark_prints_every_epoch(tmp_path):
    args = ["--size-mib", "2", "--epochs", "6", "--repeat", "1", "--dir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(FOLLOW_PY), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("epoch")) + 2
    rows = [line.split() for line in lines[start : start + 7]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3", "4", "5", "total"]
    assert [int(row[1]) for row in rows[:5]] == [1, 2, 3, 4, 5]  # chains deepen to max_chain
    assert list(tmp_path.iterdir()) == []
