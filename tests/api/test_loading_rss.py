"""mmap loads keep resident memory a small fraction of the checkpoint (Linux only).

A fresh interpreter opens the store, resets its peak RSS (``/proc/self/clear_refs``),
loads with ``mmap=True`` and reports how far the peak rose, for a first load (the file
is built) and a second (the file is re-hashed, as after a reboot, and reused). The bound
is loose so a busy 2-core machine cannot fail it; ``benchmarks/run.py --loads`` reports
the real figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import castore
from castore._config import CACHE_DIR_ENV

MiB = 1 << 20
SIZE = 256 * MiB

PROBE = """
import glob, json, os, sys
import castore

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

run = castore.open(sys.argv[1], create=False, progress=False).run("r")
run.record(0)
growth = []
for _ in range(2):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    state = run.load(0, mmap=True)
    growth.append(status("VmHWM") - base)
    assert state["w0"].shape == (1024, 1024 * 16)
    del state
    for marker in glob.glob(os.path.join(sys.argv[2], "*.ok")):
        os.unlink(marker)  # as after a reboot: the second load re-hashes the file
print(json.dumps(growth))
"""

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak RSS reset"
)


def test_mmap_load_peak_rss_stays_well_below_the_checkpoint(tmp_path):
    url = str(tmp_path / "store")
    store = castore.open(url, codec=castore.CodecOptions(codec="raw"), progress=False)
    weight = torch.ones(1024, 1024 * 16)  # 64 MiB; four of them, distinct bytes
    store.run("r").save({f"w{i}": weight * i for i in range(SIZE // (64 * MiB))}, epoch=0)
    del weight
    env = {**os.environ, CACHE_DIR_ENV: str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", PROBE, url, str(tmp_path / "cache" / "mmap")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = json.loads(proc.stdout)
    assert first < 0.4 * SIZE, f"first mmap load grew peak RSS by {first / MiB:.0f} MiB"
    assert second < 0.4 * SIZE, f"reusing the file grew peak RSS by {second / MiB:.0f} MiB"
    [mapped] = (tmp_path / "cache" / "mmap").glob("*.bin")
    assert mapped.stat().st_size == SIZE
