"""Garbage collection at scale: two passes over a local store of many tiny blobs.

    .venv/bin/python benchmarks/gc.py                      # 100k blobs, half referenced
    .venv/bin/python benchmarks/gc.py --blobs 20000 --referenced 0.9 --dir /mnt/nvme

Blobs are 8-byte raw frames written straight through the Location API (threads, no
hashing of tensors), and checkpoints are manifest parts written with ``write_part``,
each referencing a slice of the blobs, so building the store takes seconds. Then it
times ``plan_gc`` and ``GcPlan.execute`` for the pass that records the unreferenced
blobs and for the pass that deletes them (grace 0, clock moved on between them), and
checks that exactly the unreferenced blobs went.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import castore
from castore.blobstore.layout import blob_key
from castore.blobstore.store import BlobStore
from castore.codec.frame import encode_frame
from castore.codec.hashing import hash_bytes
from castore.maintenance.gc import plan_gc
from castore.manifest.records import CheckpointRecord
from castore.manifest.writer import write_part
from castore.snapshot.refs import ChunkRef, Role, TensorRef

TENSORS_PER_CHECKPOINT = 1000


def build_store(path: str, n_blobs: int, referenced: float, workers: int) -> tuple[object, int]:
    store = castore.open(path)
    location = store.location
    payloads = [i.to_bytes(8, "little") for i in range(n_blobs)]
    digests = [hash_bytes(p) for p in payloads]

    def put(i: int) -> None:
        location.write(blob_key(digests[i]), [encode_frame(payloads[i])])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(n_blobs), chunksize=256))

    n_referenced = int(n_blobs * referenced)
    epochs = range(0, n_referenced, TENSORS_PER_CHECKPOINT)
    for epoch, start in enumerate(epochs):
        names = range(start, min(start + TENSORS_PER_CHECKPOINT, n_referenced))
        tensors = tuple(
            TensorRef(f"t{i}", Role.TENSOR, "u8", (8,), (ChunkRef(digests[i], 0, 8, 8),))
            for i in names
        )
        skeleton = {"dict": [[t.name, {"tensor": k}] for k, t in enumerate(tensors)]}
        record = CheckpointRecord(
            run="bench",
            epoch=epoch,
            step=None,
            created_at=datetime.now(UTC),
            parent_epoch=None,
            logical_bytes=8 * len(tensors),
            new_bytes=8 * len(tensors),
            stored_bytes=24 * len(tensors),
            new_blobs=len(tensors),
            skeleton=json.dumps(skeleton),
            tensors=tensors,
        )
        write_part(location, record)
    return store, n_referenced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=100_000)
    parser.add_argument("--referenced", type=float, default=0.5, help="fraction (default 0.5)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--dir", help="where the scratch store is made (default: temp dir)")
    args = parser.parse_args()

    scratch = tempfile.mkdtemp(prefix="castore-gc-bench-", dir=args.dir)
    try:
        started = time.perf_counter()
        store, n_referenced = build_store(
            f"{scratch}/store", args.blobs, args.referenced, args.workers
        )
        built_s = time.perf_counter() - started
        blobs = BlobStore(store.location)
        now = time.time() + 1
        rows = []
        for name, clock in (("record", now), ("delete", now + 1)):
            t0 = time.perf_counter()
            plan = plan_gc(blobs, grace_s=0, workers=args.workers, now=clock)
            t1 = time.perf_counter()
            report = plan.execute(store.location, workers=args.workers, now=clock)
            t2 = time.perf_counter()
            rows.append((name, t1 - t0, t2 - t1, report))
        remaining = len(blobs.listing())
        assert rows[0][3].pending_blobs == args.blobs - n_referenced
        assert rows[1][3].deleted_blobs == args.blobs - n_referenced
        assert remaining == n_referenced, remaining
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n_parts = -(-n_referenced // TENSORS_PER_CHECKPOINT)
    print(
        f"store: {args.blobs} blobs, {n_referenced} referenced by {n_parts} checkpoints "
        f"(built in {built_s:.1f} s), workers {args.workers}"
    )
    print(f"{'pass':8}{'plan s':>9}{'execute s':>11}{'total s':>9}  result")
    for name, plan_s, execute_s, report in rows:
        result = (
            f"recorded {report.pending_blobs} blobs"
            if name == "record"
            else f"deleted {report.deleted_blobs} blobs ({report.deleted_bytes} B)"
        )
        print(f"{name:8}{plan_s:9.2f}{execute_s:11.2f}{plan_s + execute_s:9.2f}  {result}")


if __name__ == "__main__":
    main()
