"""An evaluator following a run: each epoch loaded as it comes, with and without follow.

    python benchmarks/follow.py [--size-mib N] [--epochs N] [--repeat N] [--dir DIR]

Saves a transformer-shaped float32 state (default 256 MiB) for N epochs (default 9) into
a local store with the default codec, each epoch the last one plus small noise, so its
chunks are delta chains up to ``CodecOptions.max_chain`` deep. Then loads every epoch in
order twice per attempt, through a fresh ``Store`` each way: one ``run.load(epoch)``
after another, and ``ckpt.load()`` for each checkpoint ``run.follow()`` yields, where
loads keep what they decode as the next epoch's delta bases. Prints each epoch's best
time over the attempts, chain depths, and the ratio follow / plain. Every load is
checked bit for bit.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import torch

import castore
from cases.common import aligned, build_state, check_equal, human_bytes

if TYPE_CHECKING:
    from collections.abc import Sequence

MiB = 1 << 20
RUN = "bench"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="state size (default 256)")
    parser.add_argument("--epochs", type=int, default=9, help="checkpoints (default 9)")
    parser.add_argument("--repeat", type=int, default=3, help="attempts, best kept (default 3)")
    parser.add_argument("--dir", help="parent of the scratch directory (default: system temp)")
    return parser.parse_args(argv)


def drifting_states(size: int, epochs: int) -> list[dict[str, torch.Tensor]]:
    """Epoch 0 is the benchmark state; each next one adds noise of 1e-3 of its scale."""
    generator = torch.Generator().manual_seed(1)
    state = build_state(size).tensors
    states = [state]
    for _ in range(epochs - 1):
        state = {
            name: tensor + 1e-3 * torch.randn(tensor.shape, generator=generator)
            for name, tensor in state.items()
        }
        states.append(state)
    return states


def chain_depth(run: castore.Run, epoch: int) -> int:
    """Frames a load of ``epoch`` decodes for its deepest chunk."""
    return max(
        1 + (c.base is not None) + len(c.ancestors)
        for ref in run.record(epoch).tensors
        for c in ref.chunks
    )


def timed_loads(
    url: str, epochs: int, states: list[dict[str, torch.Tensor]], *, follow: bool
) -> list[float]:
    run = castore.open(url, create=False, progress=False).run(RUN)
    seconds = []
    if follow:
        for checkpoint in run.follow(timeout_s=0):
            started = time.perf_counter()
            loaded = checkpoint.load()
            seconds.append(time.perf_counter() - started)
            check_equal(f"follow epoch {checkpoint.epoch}", states[checkpoint.epoch], loaded)
    else:
        for epoch in range(epochs):
            started = time.perf_counter()
            loaded = run.load(epoch)
            seconds.append(time.perf_counter() - started)
            check_equal(f"load epoch {epoch}", states[epoch], loaded)
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    states = drifting_states(args.size_mib * MiB, args.epochs)
    nbytes = sum(t.numel() * t.element_size() for t in states[0].values())
    load_before = os.getloadavg()[0]
    print(
        f"castore {castore.__version__} follow benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC\nmachine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}\n"
        f"state: {len(states[0])} float32 tensors, {human_bytes(nbytes)}; {args.epochs} "
        f"epochs, each the last plus noise; default codec; best of {args.repeat}\n"
        "plain: run.load(epoch) in epoch order; follow: ckpt.load() for each checkpoint "
        "run.follow() yields; a fresh Store for each pass\n"
    )
    workdir = tempfile.mkdtemp(prefix="castore-follow-", dir=args.dir)
    try:
        url = os.path.join(workdir, "store")
        run = castore.open(url, progress=False).run(RUN)
        for epoch, state in enumerate(states):
            run.save(state, epoch=epoch)
        depths = [chain_depth(run, epoch) for epoch in range(args.epochs)]
        best = {"plain": [float("inf")] * args.epochs, "follow": [float("inf")] * args.epochs}
        for attempt in range(args.repeat):
            print(f"  attempt {attempt + 1}/{args.repeat}", file=sys.stderr, flush=True)
            for way in best:
                times = timed_loads(url, args.epochs, states, follow=way == "follow")
                best[way] = [min(a, b) for a, b in zip(best[way], times, strict=True)]
        rows = [
            (str(e), str(depths[e]), f"{p:.3f}", f"{f:.3f}", f"{f / p:.2f}")
            for e, (p, f) in enumerate(zip(best["plain"], best["follow"], strict=True))
        ]
        plain, followed = sum(best["plain"]), sum(best["follow"])
        rows.append(("total", "", f"{plain:.3f}", f"{followed:.3f}", f"{followed / plain:.2f}"))
        head = ("epoch", "frames", "plain s", "follow s", "x plain")
        print(aligned(head, rows, {1, 2, 3, 4}))
        print(f"\n1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
