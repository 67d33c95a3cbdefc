"""Save and load one transformer-shaped state dict with castore, torch and safetensors.

    python benchmarks/run.py [--backend local|s3] [--loads] [--quick] [--size-mib N]
                             [--repeat K] [--dir DIR] [--json OUT]

Prints one row per case with the best time of its repeats, throughput over the logical
bytes, bytes on disk, and the time ratio against torch and safetensors (see README.md).
Loads read files the run has just written, so they come from a warm page cache.
``--backend s3`` instead compares castore with torch.save + s3fs over two epochs on a
moto S3 server in this process, with the bytes each side moved. ``--loads`` compares
castore's eager, mmap and partial loads with safetensors' and torch's mapped loads, each
reading every byte it returns, and with the eager loads of both (safetensors' ``pread``
backend, ``torch.load(mmap=True)`` and a copy), with the peak RSS of each castore load.
"""

from __future__ import annotations

import argparse
import gc
import json
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
from cases.castore_cases import bench_castore, bench_castore_async
from cases.common import BenchState, MiB, Result, aligned, build_state, human_bytes
from cases.loads import bench_loads
from cases.peers import bench_safetensors, bench_torch
from cases.s3 import S3Result, bench_s3, describe_s3, moto_s3

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

FULL_MIB = 1024
S3_FULL_MIB = 256
QUICK_MIB = 32
FULL_REPEAT = 5
QUICK_REPEAT = 3

# Each kind's rows are divided by these peers' best times: ratio > 1 means slower.
PEERS = {
    "save": ("torch.save", "safetensors save_file"),
    "load": ("torch.load", "safetensors load_file"),
}
# The --loads peers, by the JSON ratio field each case gets against them: two mapped loads
# (nothing copied) and two eager ones (every byte copied into fresh memory, as castore's
# eager load does).
LOADS_PEERS = {
    "x_safetensors": "safetensors load_file + read",
    "x_torch_mmap": "torch.load mmap + read",
    "x_safetensors_pread": "safetensors load_file pread + read",
    "x_torch_copy": "torch.load mmap + copy + read",
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=("local", "s3"),
        default="local",
        help="local disk (default) or a moto S3 server in this process",
    )
    parser.add_argument(
        "--loads",
        action="store_true",
        help="the evaluator load cases (eager, mmap, partial) on local disk instead",
    )
    parser.add_argument("--quick", action="store_true", help=f"a {QUICK_MIB} MiB state")
    parser.add_argument(
        "--size-mib",
        type=int,
        help=f"state size (default {FULL_MIB}, {S3_FULL_MIB} with --backend s3)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        help=f"timed repeats per case, best kept (default {FULL_REPEAT}, {QUICK_REPEAT} quick)",
    )
    parser.add_argument("--dir", help="parent of the scratch directory (default: system temp)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0, help="seed of the state's values")
    args = parser.parse_args(argv)
    if args.size_mib is None:
        full = S3_FULL_MIB if args.backend == "s3" else FULL_MIB
        args.size_mib = QUICK_MIB if args.quick else full
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else FULL_REPEAT
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be positive")
    if args.loads and args.backend != "local":
        parser.error("--loads runs on local disk only")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every case in a scratch directory that is removed afterwards; print the table."""
    args = parse_args(argv)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    state = build_state(args.size_mib * MiB, seed=args.seed)
    workdir = tempfile.mkdtemp(prefix="castore-bench-", dir=args.dir)
    results: Sequence[Result]
    try:
        if args.backend == "s3":
            s3 = run_s3(state, workdir, args.repeat)
            results, table, fields = s3, format_s3_table(s3), s3_fields(s3)
        elif args.loads:
            print("running loads...", file=sys.stderr, flush=True)
            loads = bench_loads(state, workdir, args.repeat)
            results, table, fields = loads, format_loads_table(loads), loads_fields(loads)
        else:
            local = run_local(state, workdir, args.repeat)
            results, table, fields = local, format_table(local), local_fields(local)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = describe(state, args, workdir, load_before)
    print("\n".join(header))
    print()
    print(table)
    print(f"\ntotal {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        write_json(args.json, header, state, args, results, fields)
    return 0


def run_local(state: BenchState, workdir: str, repeat: int) -> list[Result]:
    """The local-disk suites, one after the other; saves first in the table."""
    suites: list[tuple[str, Callable[[], list[Result]]]] = [
        ("torch", lambda: bench_torch(state, workdir, repeat)),
        ("safetensors", lambda: bench_safetensors(state, workdir, repeat)),
        (
            "castore auto",
            lambda: bench_castore(state, workdir, repeat, "auto", resave=True, cold=True),
        ),
        (
            "castore raw",
            lambda: bench_castore(
                state, workdir, repeat, "raw", resave=False, cold=False, unverified=True
            ),
        ),
        ("castore async", lambda: bench_castore_async(state, workdir, repeat)),
    ]
    results: list[Result] = []
    for name, suite in suites:
        print(f"running {name}...", file=sys.stderr, flush=True)
        results.extend(suite())
        gc.collect()
    results.sort(key=lambda r: r.kind != "save")
    return results


def run_s3(state: BenchState, workdir: str, repeat: int) -> list[S3Result]:
    """The S3 cases against a moto server that lives as long as they run."""
    with moto_s3() as server:
        print(f"running s3 against moto at {server.endpoint_url}...", file=sys.stderr, flush=True)
        return bench_s3(state, server, workdir, repeat)


def describe(
    state: BenchState, args: argparse.Namespace, workdir: str, load_before: float
) -> list[str]:
    """The header: what was measured, where, how busy the machine was, the caveats."""
    s3 = args.backend == "s3"
    header = [
        f"castore {castore.__version__} {'S3 ' if s3 else ''}benchmark, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
        f"state: {len(state.tensors)} float32 tensors, {state.nbytes / MiB:.1f} MiB "
        f"(d_model {state.d_model}, {state.layers} layers, vocab {state.vocab}, "
        f"seed {args.seed})",
    ]
    if args.loads:
        return [
            *header,
            f"scratch: {os.path.dirname(workdir)}; best of {args.repeat}; WARM-CACHE; castore "
            "saved with codec=raw; every case reads every byte it returns (uint8 max per tensor)",
            "before each attempt (untimed): the case's files are read; a case that fills new "
            "memory first touches and frees 1.25x the state (see cases/loads.py)",
            "peak RSS: VmHWM rise during the load (no read) in a fresh interpreter / checkpoint "
            "size; blob bytes: castore blobs read per load",
            "ratios: case time / peer time (st = safetensors), so < 1 means castore is faster; "
            "GB = 1e9 bytes",
        ]
    if not s3:
        return [
            *header,
            f"scratch: {os.path.dirname(workdir)}; best of {args.repeat}; "
            "loads are WARM-CACHE (page cache not dropped)",
            "ratios: case time / peer time, so < 1 means castore is faster; GB = 1e9 bytes",
        ]
    return [*header, *describe_s3(state, args.repeat)]


def ratios(results: Sequence[Result]) -> dict[str, tuple[float, float]]:
    """Each case's best time over its kind's torch and safetensors peers."""
    best = {r.case: r.best for r in results}
    ratio: dict[str, tuple[float, float]] = {}
    for r in results:
        torch_peer, safetensors_peer = PEERS[r.kind]
        ratio[r.case] = (r.best / best[torch_peer], r.best / best[safetensors_peer])
    return ratio


def local_fields(results: Sequence[Result]) -> dict[str, dict[str, object]]:
    """Each local case's JSON ratio fields."""
    return {
        case: {"x_torch": x_torch, "x_safetensors": x_safetensors}
        for case, (x_torch, x_safetensors) in ratios(results).items()
    }


def loads_fields(results: Sequence[Result]) -> dict[str, dict[str, object]]:
    """Each loads case's ratios against the mapped and the eager peers."""
    best = {r.case: r.best for r in results}
    return {
        r.case: {field: r.best / best[peer] for field, peer in LOADS_PEERS.items()} for r in results
    }


def format_loads_table(results: Sequence[Result]) -> str:
    """The loads table: times, ratios to the peers, peak RSS and blob bytes read."""
    ratio = loads_fields(results)
    head = ("case", "best s", "median s", "GB/s", "x st mmap", "x torch mmap", "x st pread")
    head += ("x torch copy", "peak RSS", "blob bytes", "note")
    rows = []
    for r in results:
        fraction = r.extra.get("peak_rss_fraction")
        read = r.extra.get("blob_bytes_read", 0)
        peer = r.case in LOADS_PEERS.values()
        rows.append(
            (
                r.case,
                f"{r.best:.3f}",
                f"{r.median:.3f}",
                f"{r.gb_per_s:.2f}",
                *(f"{ratio[r.case][field]:.2f}" for field in LOADS_PEERS),
                "" if fraction is None else f"{fraction:.1%}",
                human_bytes(read, 1) if read else "-" if peer else "0",
                r.note,
            )
        )
    return aligned(head, rows, numeric={1, 2, 3, 4, 5, 6, 7, 8, 9})


def s3_ratios(results: Sequence[S3Result]) -> dict[str, float]:
    """Each S3 case's best time over its peer's (1.0 for a peer)."""
    best = {r.case: r.best for r in results}
    return {r.case: r.best / best[r.peer] for r in results}


def s3_fields(results: Sequence[S3Result]) -> dict[str, dict[str, object]]:
    """Each S3 case's JSON fields: its peer, the ratio, what it moved and what the server saw."""
    by_case = s3_ratios(results)
    return {
        r.case: {
            "peer": r.peer,
            "x_peer": by_case[r.case],
            "bytes_uploaded": r.uploaded,
            "bytes_downloaded": r.downloaded,
            "requests": r.wire.requests,
            "http_body_bytes_received": r.wire.received,
            "http_body_bytes_sent": r.wire.sent,
        }
        for r in results
    }


def format_table(results: Sequence[Result]) -> str:
    """An aligned text table, one row per case."""
    by_case = ratios(results)
    head = ("case", "best s", "median s", "GB/s", "on disk", "x torch", "x safetensors", "note")
    rows = [
        (
            r.case,
            f"{r.best:.3f}",
            f"{r.median:.3f}",
            f"{r.gb_per_s:.2f}",
            human_bytes(r.disk_bytes, 1),
            f"{by_case[r.case][0]:.2f}",
            f"{by_case[r.case][1]:.2f}",
            r.note,
        )
        for r in results
    ]
    return aligned(head, rows, numeric={1, 2, 3, 4, 5, 6})


def format_s3_table(results: Sequence[S3Result]) -> str:
    """An aligned text table, one row per case, each castore case under its peer."""
    by_case = s3_ratios(results)
    head = ("case", "best s", "median s", "GB/s", "up", "down", "requests", "x peer", "note")
    rows = [
        (
            r.case,
            f"{r.best:.3f}",
            f"{r.median:.3f}",
            f"{r.gb_per_s:.2f}",
            human_bytes(r.uploaded, 1) if r.uploaded else "0",
            human_bytes(r.downloaded, 1) if r.downloaded else "0",
            str(r.wire.requests),
            f"{by_case[r.case]:.2f}",
            r.note,
        )
        for r in results
    ]
    return aligned(head, rows, numeric={1, 2, 3, 4, 5, 6, 7})


def write_json(
    path: str,
    header: list[str],
    state: BenchState,
    args: argparse.Namespace,
    results: Sequence[Result],
    fields: dict[str, dict[str, object]],
) -> None:
    """The table's numbers, every repeat's time included, for tracking over time.

    ``fields`` holds each case's backend-specific numbers (ratios, transfers).
    """
    document = {
        "header": header,
        "backend": args.backend,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "castore": castore.__version__,
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "seed": args.seed,
        "logical_bytes": state.nbytes,
        "tensors": len(state.tensors),
        "results": [
            {
                "case": r.case,
                "kind": r.kind,
                "seconds_best": r.best,
                "seconds_median": r.median,
                "seconds": r.seconds,
                "gb_per_s": r.gb_per_s,
                "disk_bytes": r.disk_bytes,
                **fields[r.case],
                "note": r.note,
                **r.extra,
            }
            for r in results
        ],
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
