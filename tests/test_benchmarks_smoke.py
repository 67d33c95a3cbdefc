"""The benchmark harness still runs end to end (tiny size, one repeat), so it cannot rot.

Numbers come from ``benchmarks/run.py`` itself, never from this test; it only checks that
every case runs, verifies what it loaded, prints its row and cleans up after itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"

CASES = [
    "torch.save",
    "safetensors save_file",
    "castore auto save",
    "castore auto re-save unchanged",
    "castore raw save",
    "torch.load",
    "torch.load mmap + copy",
    "safetensors load_file",
    "safetensors load_file pread",
    "castore auto load",
    "castore auto cold load",
    "castore raw load",
]


def test_quick_benchmark_runs_every_case(tmp_path):
    out = tmp_path / "results.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["--quick", "--size-mib", "2", "--repeat", "1", "--dir", str(scratch)]
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(RUN_PY), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WARM-CACHE" in proc.stdout
    rows = {line.split("  ")[0] for line in proc.stdout.splitlines()}
    assert set(CASES) <= rows, proc.stdout

    results = json.loads(out.read_text())["results"]
    assert [r["case"] for r in results] == CASES
    assert all(r["seconds_best"] > 0 and r["disk_bytes"] > 0 for r in results)
    assert list(scratch.iterdir()) == []
