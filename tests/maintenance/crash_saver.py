"""A trainer to kill: forks one child per trial; each child saves checkpoints in a loop.

Run as ``python crash_saver.py URL`` with the store's fsspec options as JSON in the
environment variable ``CASTORE_CRASH_OPTIONS``. It imports torch and castore once, then
reads commands on stdin: ``fork`` starts a child and prints ``pid <pid>``; the child
prints ``ready`` once it has reached the store, then saves until killed; once it has
died, ``exit <wait status>`` follows. End of input ends it. Each child resumes the run
at its latest epoch plus one, so the epoch a killed
child was saving is saved again by the next one. States are a pure function of the
epoch (``state_for``), so the test can check every checkpoint bit for bit.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import fsspec
import torch

import castore

RUN = "crash"
CHUNKING = castore.ChunkingOptions(chunk_bytes=16 * 1024, pack_below_bytes=4 * 1024)
OPTIONS_ENV = "CASTORE_CRASH_OPTIONS"


def state_for(epoch: int) -> dict[str, object]:
    """A small training state: a frozen part shared by every epoch, and changing weights."""
    generator = torch.Generator().manual_seed(epoch)
    return {
        "frozen": torch.arange(24 * 1024, dtype=torch.float32),
        "w": torch.randn(12 * 1024, generator=generator),
        "b": torch.randn(64, generator=generator),
        "step": torch.tensor(epoch * 100),
        "epoch": epoch,
    }


def open_store(url: str, options: dict[str, object]) -> castore.Store:
    return castore.open(
        url, chunking=CHUNKING, cache=castore.CacheOptions(enabled=False), **options
    )


def warm_up() -> None:
    """One save and load on a throwaway memory store: every lazy import and first-use
    cost is paid here, once, so a child saves at once and kills land inside saves."""
    run = open_store(f"memory://castore-crash-warm-up-{os.getpid()}", {}).run(RUN)
    run.save(state_for(0), epoch=0, metrics={"score": 0.0})
    run.load(0)


def save_forever(url: str, options: dict[str, object]) -> None:
    run = open_store(url, options).run(RUN)
    run.latest()
    os.write(1, b"ready\n")  # one write: atomic on a pipe, never interleaved
    while True:
        latest = run.latest()
        epoch = 0 if latest is None else latest + 1
        run.save(state_for(epoch), epoch=epoch, metrics={"score": float(epoch)})


def main() -> None:
    url = sys.argv[1]
    options = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    fsspec.get_filesystem_class(fsspec.utils.get_protocol(url))  # import it once, not per child
    warm_up()
    for line in sys.stdin:
        if line.strip() != "fork":
            continue
        pid = os.fork()
        if pid == 0:
            try:
                save_forever(url, options)
            except BaseException:
                traceback.print_exc()
            os._exit(1)  # only reached on an error: the test expects SIGKILL
        os.write(1, f"pid {pid}\n".encode())
        _, status = os.waitpid(pid, 0)
        os.write(1, f"exit {status}\n".encode())


if __name__ == "__main__":
    main()
