"""``benchmarks/run.py --loads`` still runs end to end (tiny size, one attempt).

Numbers come from the benchmark itself, never from this test: it only checks that every
load case runs, checks what it loaded, reports peak RSS where it should, and cleans up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"

CASES = [
    "safetensors load_file + read",
    "torch.load mmap + read",
    "safetensors load_file pread + read",
    "torch.load mmap + copy + read",
    "castore raw load + read",
    "castore raw load, hashing every blob + read",
    "castore raw load verify=False + read",
    "castore mmap load, new file + read",
    "castore mmap load, reused + read",
    "castore mmap load, reused after reboot + read",
    "castore mmap load, reused, verify=False + read",
]


def test_loads_benchmark_runs_every_case(tmp_path):
    out = tmp_path / "results.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["--loads", "--size-mib", "2", "--repeat", "1", "--dir", str(scratch)]
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(RUN_PY), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    names = [r["case"] for r in results]
    assert names[: len(CASES)] == CASES
    assert names[-1].startswith("castore partial load (")
    rss = {r["case"]: r.get("peak_rss_fraction") for r in results}
    measured = [case for case in CASES if case.startswith(("castore raw load +", "castore mmap"))]
    assert all(rss[case] is not None for case in measured)
    assert rss["castore raw load verify=False + read"] is None
    ratios = ("x_safetensors", "x_torch_mmap", "x_safetensors_pread", "x_torch_copy")
    assert all(r["seconds_best"] > 0 and all(r[x] > 0 for x in ratios) for r in results)
    assert list(scratch.iterdir()) == []
