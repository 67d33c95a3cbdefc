"""Peak RSS of one castore load, run in a fresh interpreter by ``loads.py``.

    python benchmarks/cases/rss_probe.py STORE_URL eager|mmap|mmap-noverify

Opens the store and parses the manifest first, resets the peak (``/proc/self/clear_refs``),
loads epoch 0 of run "bench" and prints ``{"growth": bytes}``: ``VmHWM`` after the load
minus ``VmRSS`` before it. Nothing returned is touched, so a mapped load counts only what
loading itself kept resident.
"""

from __future__ import annotations

import json
import sys

import castore

__all__ = ["main"]


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def main(url: str, mode: str) -> int:
    run = castore.open(url, create=False, progress=False).run("bench")
    run.record(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    state = run.load(0, mmap=mode != "eager", verify=mode != "mmap-noverify")
    print(json.dumps({"growth": status("VmHWM") - before, "tensors": len(state)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
