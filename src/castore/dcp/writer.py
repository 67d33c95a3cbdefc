"""StorageWriter: ``torch.distributed.checkpoint.save`` into a castore run, one epoch.

Every rank stores its own items' bytes as chunks, concurrently, deduplicated against the
whole store (other ranks, earlier epochs) and delta-encoded against the same item of the
parent checkpoint; the coordinator then commits ONE manifest part holding DCP's metadata
as plain values (``castore.dcp.metadata``). The part is created exclusively and last, so
a crash of any rank before the commit leaves no visible checkpoint, only unreferenced
blobs that garbage collection removes.
"""

from __future__ import annotations

import dataclasses
import io
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint import StorageWriter as _DcpStorageWriter
from torch.distributed.checkpoint.planner import WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from castore.api.store import open_store
from castore.api.tensor_blobs import store_tensors
from castore.api.validate import check_epoch, check_metrics, check_step
from castore.dcp.checkpoint_id import NamedByRunAndEpoch
from castore.dcp.metadata import DCP_KEY, ITEMS_KEY, check_plain, entry_name, metadata_to_tree
from castore.errors import CastoreError, ConflictError, InvalidCheckpointError
from castore.manifest.records import CheckpointRecord
from castore.manifest.writer import write_part
from castore.snapshot.tensors import plan_entries
from castore.snapshot.tree import flatten_tree

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
    from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem

    from castore._config import CacheOptions, ChunkingOptions, CodecOptions, TransferOptions
    from castore.blobstore.retry import RetryPolicy
    from castore.snapshot.refs import TensorRef

__all__ = ["StorageWriter"]


@dataclass(frozen=True, slots=True)
class _GlobalPlan:
    """What the coordinator tells every rank before it writes: the delta parent."""

    parent_epoch: int | None


@dataclass(frozen=True, slots=True)
class _StoredItem:
    """One item's ``WriteResult.storage_data``: its entry, and the blobs written for it
    as (digest, decoded bytes, frame bytes), so the coordinator can count each once."""

    ref: TensorRef
    written: tuple[tuple[str, int, int], ...]


class StorageWriter(NamedByRunAndEpoch, _DcpStorageWriter):
    """Save a DCP checkpoint as checkpoint ``epoch`` of ``run`` in the store at ``store_url``.

    Pass one to ``torch.distributed.checkpoint.save`` (or ``async_save``) on every rank,
    with the same arguments. The checkpoint shows in ``castore ls``, queries and
    ``best=`` with its ``metrics``; ``castore.dcp.StorageReader`` loads it back, at any
    world size. ``storage_options`` go to fsspec; the option dataclasses are those of
    ``castore.open``.

    DCP calls, in order: ``set_up_storage_writer`` and ``prepare_local_plan`` on every
    rank; ``prepare_global_plan`` on the coordinator (checks the epoch is free, picks the
    parent checkpoint for deltas); ``write_data`` on every rank (stores its items'
    chunks); ``finish`` on the coordinator (commits the manifest part).

    Raises:
        InvalidCheckpointError: bad run name, epoch, step or metrics; nothing written.
        ConflictError: the epoch is already committed (also raised inside DCP, wrapped in
            its ``CheckpointException``, when another writer commits it first).
    """

    dcp_call = "dcp.save"

    def __init__(
        self,
        store_url: str,
        run: str,
        epoch: int,
        *,
        step: int | None = None,
        metrics: Mapping[str, object] | None = None,
        chunking: ChunkingOptions | None = None,
        codec: CodecOptions | None = None,
        transfer: TransferOptions | None = None,
        cache: CacheOptions | None = None,
        retry: RetryPolicy | None = None,
        **storage_options: object,
    ) -> None:
        super().__init__()
        self.epoch = check_epoch(epoch)
        self.step = check_step(step)
        self.metrics = check_metrics(metrics)
        self.store = open_store(
            store_url,
            chunking=chunking,
            codec=codec,
            transfer=transfer,
            cache=cache,
            retry=retry,
            progress=False,
            reuse_unchanged=False,
            **storage_options,
        )
        self.run = self.store.run(run)
        self._check_free()
        self._parent_epoch: int | None = None

    def __repr__(self) -> str:
        return f"castore.dcp.StorageWriter({self.store.url!r}, {self.run.name!r}, {self.epoch})"

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        del is_coordinator, args
        if kwargs.get("use_collectives", True) is False:
            raise InvalidCheckpointError(
                "castore.dcp commits one manifest part per checkpoint from the coordinator; "
                "save with use_collectives=True"
            )

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        check_plain(plan.planner_data, "planner data")
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        """Refuse a committed epoch before any rank writes; the latest earlier checkpoint
        is every rank's delta parent."""
        earlier = self._check_free()
        self._parent_epoch = earlier[-1] if earlier else None
        shared = _GlobalPlan(self._parent_epoch)
        return [dataclasses.replace(plan, storage_data=shared) for plan in plans]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        """Store this rank's items; the future is already complete when returned."""
        shared = plan.storage_data
        if not isinstance(shared, _GlobalPlan):
            raise InvalidCheckpointError(
                "the save plan carries no castore storage data; was this StorageWriter "
                "given to dcp.save on every rank?"
            )
        with self._context():
            parent = None
            if shared.parent_epoch is not None:
                parent = self.run.record(shared.parent_epoch)
            entries = [
                plan_entries(
                    (entry_name(item),), (_item_tensor(item, planner.resolve_data(item)),)
                )[0]
                for item in plan.items
            ]
            stored = store_tensors(
                self.store.blobs,
                entries,
                epoch=self.epoch,
                parent=parent,
                options=self.store.options,
            )
        results = []
        unclaimed = dict(stored.written)
        for item, ref in zip(plan.items, stored.refs, strict=True):
            written = []
            for chunk in ref.chunks:
                sizes = unclaimed.pop(chunk.digest, None)  # type: ignore[call-overload]
                if sizes is not None:
                    written.append((chunk.digest, *sizes))
            results.append(
                WriteResult(item.index, ref.stored_length, _StoredItem(ref, tuple(written)))
            )
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """Commit the checkpoint: one manifest part, created exclusively."""
        stored: dict[MetadataIndex, _StoredItem] = {
            result.index: result.storage_data for rank in results for result in rank
        }
        order = sorted(stored, key=lambda index: (index.fqn, tuple(index.offset or ())))
        refs = tuple(stored[index].ref for index in order)
        entries = {index: stored[index].ref.name for index in order}
        items = {ref.name.removeprefix(f"{ITEMS_KEY}."): _PLACEHOLDER for ref in refs}
        tree = {DCP_KEY: metadata_to_tree(metadata, entries), ITEMS_KEY: items}
        flat = flatten_tree(tree)
        if flat.names != tuple(ref.name for ref in refs):
            raise InvalidCheckpointError(
                "two DCP items map to one tensor name; their fully qualified names collide"
            )
        written = {
            digest: (decoded, frame)
            for item in stored.values()
            for digest, decoded, frame in item.written
        }
        record = CheckpointRecord(
            run=self.run.name,
            epoch=self.epoch,
            step=self.step,
            created_at=datetime.now(UTC),
            parent_epoch=self._parent_epoch,
            logical_bytes=sum(ref.stored_length for ref in refs),
            new_bytes=sum(decoded for decoded, _ in written.values()),
            stored_bytes=sum(frame for _, frame in written.values()),
            new_blobs=len(written),
            skeleton=flat.skeleton,
            tensors=refs,
            metrics=self.metrics,
        )
        with self._context():
            write_part(self.store.location, record)
        metadata.storage_data = entries

    @contextmanager
    def _context(self) -> Iterator[None]:
        """Name the run and epoch on castore errors; DCP wraps them per rank."""
        try:
            yield
        except CastoreError as exc:
            exc.run, exc.epoch = exc.run or self.run.name, self.epoch
            exc.add_note(f"while saving run '{self.run.name}' epoch {self.epoch} through DCP")
            raise

    def _check_free(self) -> list[int]:
        """The run's committed epochs before ours; ConflictError if ours is among them."""
        epochs = self.run.epochs()
        if self.epoch in epochs:
            raise ConflictError(
                f"epoch {self.epoch} of run '{self.run.name}' is already committed; "
                "save under a new epoch or delete the old one first",
                run=self.run.name,
                epoch=self.epoch,
                url=self.store.url,
            )
        return [e for e in epochs if e < self.epoch]


_PLACEHOLDER = torch.empty(0)


def _item_tensor(item: WriteItem, data: torch.Tensor | io.BytesIO) -> torch.Tensor:
    """The tensor an item's bytes are stored as: itself, or DCP's bytes as uint8."""
    if isinstance(data, torch.Tensor) and item.type != WriteItemType.BYTE_IO:
        return data
    if not isinstance(data, io.BytesIO) or item.type != WriteItemType.BYTE_IO:
        raise InvalidCheckpointError(
            f"the save planner resolved {item.type.name} item '{item.index.fqn}' to a "
            f"{type(data).__name__}; castore.dcp stores tensors and BytesIO only"
        )
    raw = bytearray(data.getbuffer())
    if not raw:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(raw, dtype=torch.uint8)
