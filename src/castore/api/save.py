"""A save: flatten -> plan -> hash -> dedup -> encode and put -> commit the part.

A save is prepared, then committed. ``prepare_checkpoint`` does what must see the state
as it is when ``save`` is called: checks, flattening, and the store plan
(``tensor_blobs.plan_store``: the chunk plan, which chunks are unchanged since the
previous save, the memo's sampled windows and, for a save that finishes in the
background, host copies of the bytes still to be hashed, and only those, so training can
go on). ``commit_checkpoint`` stores the blobs (``tensor_blobs.store_planned``) and then
writes the manifest part, last (see manifest.writer).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from castore.api.tensor_blobs import StorePlan, plan_store, store_planned
from castore.api.validate import check_epoch, check_metrics, check_step
from castore.manifest.records import CheckpointRecord
from castore.manifest.writer import write_part
from castore.snapshot.tensors import EntryPlan, replan_entries
from castore.snapshot.tree import flatten_tree

if TYPE_CHECKING:
    from collections.abc import Mapping

    from castore.api.tensor_blobs import SaveOptions
    from castore.api.unchanged import SaveMemo
    from castore.blobstore.store import BlobStore

__all__ = ["PreparedCheckpoint", "SaveInfo", "commit_checkpoint", "prepare_checkpoint"]


@dataclass(frozen=True, slots=True)
class SaveInfo:
    """What a save did: ``new_bytes`` decoded and ``stored_bytes`` encoded bytes written."""

    run: str
    epoch: int
    step: int | None
    logical_bytes: int
    new_bytes: int
    stored_bytes: int
    blobs_written: int
    blobs_skipped: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class PreparedCheckpoint:
    """A save as of the call: its checked inputs, skeleton, entry plan and store plan."""

    epoch: int
    step: int | None
    metrics: dict[str, float]
    skeleton: str
    entry_plan: EntryPlan
    plan: StorePlan
    started: float


def prepare_checkpoint(
    state: object,
    *,
    epoch: int,
    step: int | None,
    metrics: Mapping[str, object] | None,
    parent: CheckpointRecord | None,
    options: SaveOptions,
    memo: SaveMemo | None = None,
    pickle: bool = False,
    copy: bool = False,
) -> PreparedCheckpoint:
    """Check ``state`` and plan its save; every input is checked here, before anything
    is written. ``copy``: take host copies of the bytes the save still has to read, for a
    save that finishes after the caller has moved on (see ``plan_store``).

    ``memo`` is what this process's previous save of the run remembered (see
    ``unchanged``); it is used only when that save is the parent. ``pickle`` keeps objects
    other than containers, tensors and plain values whole (``snapshot.pickled``).
    """
    started = time.perf_counter()
    epoch = check_epoch(epoch)
    step = check_step(step)
    checked_metrics = check_metrics(metrics)
    flat = flatten_tree(state, pickle=pickle)
    entry_plan = replan_entries(
        flat.names, flat.tensors, memo.entry_plan if memo is not None else None
    )
    plan = plan_store(
        list(entry_plan.entries), parent=parent, options=options, memo=memo, copy=copy
    )
    return PreparedCheckpoint(
        epoch, step, checked_metrics, flat.skeleton, entry_plan, plan, started
    )


def commit_checkpoint(
    blobs: BlobStore,
    prepared: PreparedCheckpoint,
    *,
    run: str,
    parent: CheckpointRecord | None,
    options: SaveOptions,
) -> tuple[SaveInfo, CheckpointRecord, SaveMemo]:
    """Store a prepared save as checkpoint ``prepared.epoch`` of ``run``: its blobs, then
    its part. Returns what the save did, the committed record and the new memo."""
    epoch, step = prepared.epoch, prepared.step
    stored = store_planned(blobs, prepared.plan, epoch=epoch, parent=parent, options=options)
    record = CheckpointRecord(
        run=run,
        epoch=epoch,
        step=step,
        created_at=datetime.now(UTC),
        parent_epoch=parent.epoch if parent is not None else None,
        logical_bytes=stored.logical_bytes,
        new_bytes=stored.new_bytes,
        stored_bytes=stored.stored_bytes,
        new_blobs=len(stored.written),
        skeleton=prepared.skeleton,
        tensors=stored.refs,
        metrics=prepared.metrics,
    )
    write_part(blobs.location, record)
    info = SaveInfo(
        run=run,
        epoch=epoch,
        step=step,
        logical_bytes=record.logical_bytes,
        new_bytes=stored.new_bytes,
        stored_bytes=record.stored_bytes,
        blobs_written=len(stored.written),
        blobs_skipped=stored.n_blobs - len(stored.written),
        elapsed_s=time.perf_counter() - prepared.started,
    )
    return info, record, dataclasses.replace(stored.memo, entry_plan=prepared.entry_plan)
