"""The benchmark harness still runs end to end (tiny size, one repeat), so it cannot rot.

Numbers come from ``benchmarks/run.py`` itself, never from this test; it only checks that
every case runs, verifies what it loaded, prints its row and cleans up after itself, on
local disk and against the moto S3 server the S3 benchmark starts for itself.
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
    "castore auto async save, 1/4 changed: returns",
    "castore auto async save, 1/4 changed: committed",
    "torch.load",
    "torch.load mmap + copy",
    "safetensors load_file",
    "safetensors load_file pread",
    "castore auto load",
    "castore auto cold load",
    "castore raw load",
    "castore raw load verify=False",
]


S3_CASES = [
    "torch.save + s3fs upload, epoch 0",
    "castore save, epoch 0",
    "torch.save + s3fs upload, epoch 1",
    "castore save, epoch 1",
    "s3fs download + torch.load, epoch 0",
    "castore load, epoch 0",
    "s3fs download + torch.load, epoch 1",
    "castore load, epoch 1",
]


def run_benchmark(args: list[str], out: Path) -> subprocess.CompletedProcess[str]:
    """``benchmarks/run.py`` in a fresh interpreter, every warning an error."""
    return subprocess.run(
        [sys.executable, "-W", "error", str(RUN_PY), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_quick_benchmark_runs_every_case(tmp_path):
    out = tmp_path / "results.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["--quick", "--size-mib", "2", "--repeat", "1", "--dir", str(scratch)]
    proc = run_benchmark(args, out)
    assert proc.returncode == 0, proc.stderr
    assert "WARM-CACHE" in proc.stdout
    rows = {line.split("  ")[0] for line in proc.stdout.splitlines()}
    assert set(CASES) <= rows, proc.stdout

    results = json.loads(out.read_text())["results"]
    assert [r["case"] for r in results] == CASES
    assert all(r["seconds_best"] > 0 and r["disk_bytes"] > 0 for r in results)
    assert list(scratch.iterdir()) == []


def test_s3_benchmark_runs_every_case(tmp_path):
    out = tmp_path / "results.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    args = ["--backend", "s3", "--size-mib", "2", "--repeat", "1", "--dir", str(scratch)]
    proc = run_benchmark(args, out)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("  ")[0] for line in proc.stdout.splitlines()}
    assert set(S3_CASES) <= rows, proc.stdout

    document = json.loads(out.read_text())
    assert document["backend"] == "s3"
    results = {r["case"]: r for r in document["results"]}
    assert list(results) == S3_CASES
    assert all(r["seconds_best"] > 0 and r["requests"] > 0 for r in results.values())
    for case, r in results.items():
        assert r["bytes_uploaded" if r["kind"] == "save" else "bytes_downloaded"] > 0, case
    # Epoch 1 is loaded through the cache that epoch 0 filled: it fetches what epoch 1 wrote.
    assert (
        results["castore load, epoch 1"]["bytes_downloaded"]
        == results["castore save, epoch 1"]["bytes_uploaded"]
    )
    assert list(scratch.iterdir()) == []
