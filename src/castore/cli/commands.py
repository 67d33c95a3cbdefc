"""One function per ``castore`` subcommand: open the store, gather rows, print them.

The layers below (castore.api and with it torch, pyarrow, duckdb) are imported inside
each function, so building the parser and ``castore --help`` need none of them. Every
command prints a table for people, or with ``--json`` strict JSON with raw numbers for
scripts, and returns the exit status.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from castore.cli.render import (
    BYTE_COLUMNS,
    format_checkpoint,
    format_fields,
    format_table,
    format_value,
    human_bytes,
    to_json,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    import pyarrow as pa

    from castore.api.run import Run
    from castore.api.store import Store
    from castore.cli.render import Column

__all__ = [
    "checkpoint_columns",
    "checkpoint_rows",
    "cmd_best",
    "cmd_demo",
    "cmd_du",
    "cmd_follow",
    "cmd_ls",
    "cmd_query",
    "cmd_show",
    "existing_run",
    "open_store",
]


def cmd_ls(args: argparse.Namespace) -> int:
    """List the runs of a store, or with RUN the checkpoints of that run."""
    store = open_store(args)
    if args.run is not None:
        rows, metrics = checkpoint_rows(existing_run(store, args.run).summary_table())
        _emit(args, rows, lambda: format_table(rows, checkpoint_columns(metrics)))
        return 0
    runs = []
    for name in store.runs():
        table = store.run(name).summary_table()
        epochs = table.column("epoch").to_pylist()
        runs.append(
            {
                "run": name,
                "checkpoints": len(epochs),
                "latest_epoch": epochs[-1],
                **{key: sum(table.column(key).to_pylist()) for key, _ in BYTE_COLUMNS},
            }
        )
    columns = [("run", "run"), ("checkpoints", "checkpoints"), ("latest_epoch", "latest")]
    _emit(args, runs, lambda: format_table(runs, columns + BYTE_COLUMNS) if runs else "no runs")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show one checkpoint's tensors, and which of their chunks changed since its parent."""
    from castore.snapshot.tree import pickled_objects

    store = open_store(args)
    run = existing_run(store, args.run)
    record = run.record(run.latest() if args.epoch is None else args.epoch)
    parent_digests = (
        set() if record.parent_epoch is None else run.record(record.parent_epoch).digests()
    )
    tensors, n_storage = [], 0
    for ref in record.tensors:
        if ref.role == "storage":
            n_storage += 1
            continue
        n_new = sum(1 for chunk in ref.chunks if chunk.digest not in parent_digests)
        packed = any(chunk.length < chunk.blob_length for chunk in ref.chunks)
        tensors.append(
            {
                "name": ref.name,
                "role": str(ref.role),
                "dtype": ref.dtype,
                "shape": list(ref.shape),
                "bytes": ref.stored_length,
                "chunks": len(ref.chunks),
                "new_chunks": n_new,
                "packed": packed,
                "status": _chunk_status(str(ref.role), ref.base, len(ref.chunks), n_new, packed),
            }
        )
    shown = {
        "run": record.run,
        "epoch": record.epoch,
        "step": record.step,
        "parent_epoch": record.parent_epoch,
        "created_at": record.created_at,
        "metrics": record.metrics,
        "logical_bytes": record.logical_bytes,
        "new_bytes": record.new_bytes,
        "stored_bytes": record.stored_bytes,
        "storage_entries": n_storage,
        "pickled": [
            {"path": path, "class": name} for path, name in pickled_objects(record.skeleton)
        ],
        "tensors": tensors,
    }
    _emit(args, shown, lambda: format_checkpoint(shown))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    """The top checkpoints of a run by a metric (``-name`` for lowest first)."""
    from castore.errors import NotFoundError

    store = open_store(args)
    run = existing_run(store, args.run)
    rows, metrics = checkpoint_rows(run.summary_table())
    lowest = args.metric.startswith("-")
    metric = args.metric.removeprefix("-")
    if metric not in metrics:
        known = ", ".join(metrics) or "none"
        raise NotFoundError(f"no checkpoint has metric '{metric}' (metrics: {known})", run=run.name)
    scored = [row for row in rows if _is_number(row["metrics"][metric])]
    if not scored:
        raise NotFoundError(f"no checkpoint has a value for '{metric}'", run=run.name)
    sign = 1.0 if lowest else -1.0
    scored.sort(key=lambda row: (sign * row["metrics"][metric], row["epoch"]))
    top = [{"rank": rank, **row} for rank, row in enumerate(scored[: args.n], start=1)]
    columns = [("rank", "rank"), *checkpoint_columns(metrics)]
    _emit(args, top, lambda: format_table(top, columns))
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    """Run DuckDB SQL over the view ``checkpoints`` (one row per checkpoint of every run)."""
    from castore.errors import CastoreError

    store = open_store(args)
    try:
        frame = store.query(args.sql)
    except ModuleNotFoundError as exc:
        raise CastoreError(
            f"castore query needs {exc.name}; install it with: pip install 'castore[query]'"
        ) from exc
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    columns = [(str(name), str(name)) for name in frame.columns]
    _emit(args, rows, lambda: format_table(rows, columns))
    return 0


def cmd_du(args: argparse.Namespace) -> int:
    """What every checkpoint holds against what the store's blobs take."""
    usage = open_store(args).du()
    fields = {
        "runs": usage.runs,
        "checkpoints": usage.checkpoints,
        "logical_bytes": usage.logical_bytes,
        "stored_bytes": usage.stored_bytes,
        "blobs": usage.blobs,
        "dedup_ratio": usage.dedup_ratio,
    }
    text = [
        ("runs", str(usage.runs)),
        ("checkpoints", str(usage.checkpoints)),
        ("logical", human_bytes(usage.logical_bytes)),
        ("stored", human_bytes(usage.stored_bytes)),
        ("blobs", str(usage.blobs)),
        ("dedup ratio", f"{usage.dedup_ratio:.1f}x"),
    ]
    _emit(args, fields, lambda: format_fields(text))
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    """Print each checkpoint of RUN as it is committed: one line (or JSON object) each."""
    store = open_store(args)
    follower = store.run(args.run).follow(
        poll_s=args.poll, since=args.since, timeout_s=args.timeout
    )
    for checkpoint in follower:
        row = {
            "run": args.run,
            "epoch": checkpoint.epoch,
            "step": checkpoint.step,
            "created_at": checkpoint.created_at,
            "metrics": checkpoint.metrics,
        }
        if args.json:
            print(to_json(row, indent=None), flush=True)
        else:
            metrics = "  ".join(
                f"{name}={format_value(name, value)}" for name, value in row["metrics"].items()
            )
            print(
                f"epoch {checkpoint.epoch}  step {checkpoint.step}  {metrics}".rstrip(), flush=True
            )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small policy for real, checkpointing every epoch into a local store."""
    from castore.cli.demo import run_demo

    return run_demo(args.store, epochs=args.epochs)


def checkpoint_rows(table: pa.Table) -> tuple[list[dict[str, Any]], list[str]]:
    """A run's summary table as rows (metrics nested under ``metrics``) and metric names."""
    from castore.manifest.schema import SUMMARY_COLUMNS

    metrics = [name for name in table.column_names if name not in SUMMARY_COLUMNS]
    rows: list[dict[str, Any]] = [
        {
            "epoch": row["epoch"],
            "step": row["step"],
            "created_at": row["created_at"],
            "parent_epoch": row["parent_epoch"],
            "metrics": {name: row[name] for name in metrics},
            **{key: row[key] for key, _ in BYTE_COLUMNS},
            "new_blobs": row["new_blobs"],
        }
        for row in table.to_pylist()
    ]
    return rows, metrics


def checkpoint_columns(metrics: list[str]) -> list[Column]:
    """Table columns for ``checkpoint_rows``: epoch, step, each metric, bytes."""
    metric_columns = [(f"metrics.{name}", name) for name in metrics]
    return [("epoch", "epoch"), ("step", "step"), *metric_columns, *BYTE_COLUMNS]


def open_store(args: argparse.Namespace) -> Store:
    """The STORE argument opened read-only: a wrong path is not-found, never a new store."""
    import castore

    return castore.open(args.store, create=False, **args.storage_options)


def existing_run(store: Store, name: str) -> Run:
    from castore.errors import NotFoundError

    run = store.run(name)
    if not run.epochs():
        raise NotFoundError(
            f"run '{name}' has no checkpoints; 'castore ls STORE' lists the runs",
            run=name,
            url=store.url,
        )
    return run


def _emit(args: argparse.Namespace, data: object, text: Callable[[], str]) -> None:
    print(to_json(data) if args.json else text())


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not math.isnan(value)


def _chunk_status(role: str, base: str | None, n_chunks: int, n_new: int, packed: bool) -> str:
    """Whether a tensor's chunks are new or shared with the parent, by digest. A pack of
    small tensors is new when any tensor in it changed: "(packed)" flags that case."""
    if role in ("alias", "view"):
        return f"{role} of {base}"
    if n_chunks == 0:
        return "empty"
    if n_new == 0:
        status = "shared"
    elif n_new == n_chunks:
        status = "new"
    else:
        status = f"{n_new}/{n_chunks} new"
    return f"{status} (packed)" if packed else status
