"""The DCP benchmark still trains, saves and loads with every writer and prints its tables.

A tiny model, two epochs (``--smoke``), so it cannot rot; its figures mean nothing; the
numbers come from ``benchmarks/dcp.py`` at full size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DCP_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "dcp.py"


def table_rows(out: str, title: str) -> list[str]:
    """First cells of the rows of the table printed under the line starting ``title``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 3
    end = lines.index("", start)
    return [line.split()[0] for line in lines[start:end]]


def test_smoke_benchmark_prints_both_tables(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-W", "error", DCP_PY, "--smoke", "--epochs", "2", "--dir", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert table_rows(proc.stdout, "save (dcp.save)") == ["0", "1", "total"], proc.stdout
    assert table_rows(proc.stdout, "load (dcp.load") == ["0", "1", "total"], proc.stdout
    assert list(tmp_path.iterdir()) == []
