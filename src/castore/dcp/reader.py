"""StorageReader: ``torch.distributed.checkpoint.load`` from a castore checkpoint.

The metadata comes from the manifest part alone (``castore.dcp.metadata``), so DCP's
planner can reshard to any world size. Each rank then fetches only the blobs that hold
the byte range its read items need from each stored item, verifies them (BLAKE3) and
copies the requested region into the planner's tensors.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint import StorageReader as _DcpStorageReader
from torch.distributed.checkpoint.planner import LoadItemType
from torch.futures import Future

from castore.api.store import open_store
from castore.dcp.checkpoint_id import NamedByRunAndEpoch
from castore.dcp.metadata import metadata_from_tree, read_tree
from castore.errors import (
    CastoreError,
    FormatError,
    IntegrityError,
    UnsafeLoadError,
)
from castore.snapshot.dtypes import dtype_of, element_size
from castore.snapshot.fetch import MemoryDestination, fetch_jobs, plan_jobs
from castore.snapshot.rebuild import byte_view, check_refs

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex
    from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem

    from castore._config import CacheOptions, TransferOptions
    from castore.blobstore.retry import RetryPolicy
    from castore.snapshot.refs import TensorRef

__all__ = ["StorageReader"]


@dataclass(frozen=True, slots=True)
class _Span:
    """The fetched elements of a stored item: ``buffer[0]`` is the item's element ``first``."""

    buffer: torch.Tensor
    first: int


class StorageReader(NamedByRunAndEpoch, _DcpStorageReader):
    """Load checkpoint ``epoch`` (default: the latest, or the ``best`` by a metric) of
    ``run`` with ``torch.distributed.checkpoint.load``, at any world size.

    The checkpoint is resolved when the reader is made, so a missing run or epoch raises
    here, not inside DCP. DCP stores non-tensor values (a learning rate, a step count) as
    ``torch.save`` bytes and its planner unpickles them; unless ``trust``, each must first
    load with ``torch.load(weights_only=True)``, so a store cannot run code in the loader.
    ``verify=False`` skips the BLAKE3 check of fetched blobs, for trusted local stores
    only; the other options are those of ``castore.open``.

    DCP calls, in order: ``read_metadata`` and ``set_up_storage_reader`` on every rank,
    ``prepare_local_plan`` then ``prepare_global_plan`` (coordinator), then ``read_data``
    on every rank.

    Raises:
        NotFoundError: no such store, run, epoch, or no checkpoint with the metric.
        FormatError: the checkpoint was not saved through ``castore.dcp``.
        UnsafeLoadError: (from ``read_data``) a non-tensor item is not plain data and
            ``trust`` is false.
    """

    dcp_call = "dcp.load"

    def __init__(
        self,
        store_url: str,
        run: str,
        epoch: int | None = None,
        *,
        best: str | None = None,
        verify: bool = True,
        trust: bool = False,
        transfer: TransferOptions | None = None,
        cache: CacheOptions | None = None,
        retry: RetryPolicy | None = None,
        **storage_options: object,
    ) -> None:
        super().__init__()
        self.store = open_store(
            store_url,
            create=False,
            transfer=transfer,
            cache=cache,
            retry=retry,
            progress=False,
            **storage_options,
        )
        self.run = self.store.run(run)
        self.epoch = self.run.open(epoch, best=best).epoch
        self.verify = verify
        self.trust = trust
        self.record = self.run.record(self.epoch)
        self._tree = read_tree(self.record)
        metadata_from_tree(self._tree)  # malformed metadata fails here, before DCP starts
        check_refs(self.record.tensors)
        self._refs = {ref.name: ref for ref in self.record.tensors}
        self._entries: dict[MetadataIndex, str] = {}

    def __repr__(self) -> str:
        return f"castore.dcp.StorageReader({self.store.url!r}, {self.run.name!r}, {self.epoch})"

    def read_metadata(self) -> Metadata:
        """A fresh copy of the checkpoint's DCP metadata, from the manifest part."""
        return metadata_from_tree(self._tree)

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        del is_coordinator, args, kwargs
        self._entries = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Fetch what this rank's items need, then hand each to the planner."""
        by_entry: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            by_entry.setdefault(self._entry(item), []).append(item)
        try:
            spans = self._fetch(by_entry)
        except CastoreError as exc:
            exc.run, exc.epoch = self.run.name, self.epoch
            raise
        for name, items in by_entry.items():
            for item in items:
                region = _region(self._refs[name], spans[name], item)
                if item.type == LoadItemType.BYTE_IO:
                    data = region.numpy().tobytes()
                    if not self.trust:
                        self._check_safe(data, name)
                    planner.load_bytes(item, io.BytesIO(data))
                    continue
                target = planner.resolve_tensor(item).detach()
                if target.shape != region.shape:
                    raise IntegrityError(
                        f"DCP asks for a {tuple(target.shape)} region of a stored "
                        f"{tuple(region.shape)} one",
                        run=self.run.name,
                        epoch=self.epoch,
                        tensor=name,
                    )
                target.copy_(region)
                planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    def _check_safe(self, data: bytes, name: str) -> None:
        """DCP's planner unpickles non-tensor items in full; without ``trust`` they must
        first pass torch's restricted unpickler (plain values, containers, tensors)."""
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeLoadError(
                f"DCP item '{name}' holds a pickled object that torch.load(weights_only=True) "
                "refuses; DCP would unpickle it, which runs code from the store. Pass "
                "trust=True to StorageReader only if you trust whoever wrote it",
                run=self.run.name,
                epoch=self.epoch,
                tensor=name,
            ) from exc

    def _entry(self, item: ReadItem) -> str:
        name = self._entries.get(item.storage_index)
        if name is None or name not in self._refs:
            raise FormatError(
                f"DCP item {item.storage_index.fqn!r} at {list(item.storage_index.offset or [])}"
                " has no stored tensor",
                run=self.run.name,
                epoch=self.epoch,
            )
        return name

    def _fetch(self, by_entry: dict[str, list[ReadItem]]) -> dict[str, _Span]:
        """Each entry's elements that its items touch, read from the blobs covering them."""
        spans: dict[str, _Span] = {}
        partial: list[TensorRef] = []
        views: dict[str, np.ndarray] = {}
        for name, items in by_entry.items():
            ref = self._refs[name]
            extents = [_extent(ref, item) for item in items]
            extents = [e for e in extents if e[1] > e[0]]
            if not extents:
                spans[name] = _Span(torch.empty(0, dtype=dtype_of(ref.dtype)), 0)
                continue
            start, stop = min(e[0] for e in extents), max(e[1] for e in extents)
            part, span, view = _covering(ref, start, stop)
            partial.append(part)
            spans[name] = span
            views[name] = view
        fetch_jobs(
            self.store.blobs,
            plan_jobs(partial),
            MemoryDestination(views),
            transfer=self.store.options.transfer,
            verify=self.verify,
        )
        return spans


def _extent(ref: TensorRef, item: ReadItem) -> tuple[int, int]:
    """The first and one-past-last element (row-major) of the region ``item`` reads."""
    if item.type == LoadItemType.BYTE_IO:
        return 0, ref.numel
    strides = _strides(ref.shape)
    if any(length == 0 for length in item.lengths):
        return 0, 0
    first = sum(o * s for o, s in zip(item.storage_offsets, strides, strict=True))
    last = sum(
        (o + n - 1) * s for o, n, s in zip(item.storage_offsets, item.lengths, strides, strict=True)
    )
    return first, last + 1


def _covering(ref: TensorRef, start: int, stop: int) -> tuple[TensorRef, _Span, np.ndarray]:
    """The ref cut down to the chunks holding elements ``[start, stop)``, a buffer for
    them and the byte view of it that those chunks decode into."""
    size = element_size(ref.dtype)
    lo, hi = start * size, stop * size
    chunks, position, begin = [], 0, None
    for chunk in ref.chunks:
        end = position + chunk.length
        if end > lo and position < hi:
            begin = position if begin is None else begin
            chunks.append(chunk)
        position = end
    assert begin is not None
    covered = sum(chunk.length for chunk in chunks)
    first = begin // size
    buffer = torch.empty(math.ceil((begin + covered) / size) - first, dtype=dtype_of(ref.dtype))
    offset = begin - first * size
    view = byte_view(buffer)[offset : offset + covered]
    return replace(ref, chunks=tuple(chunks)), _Span(buffer, first), view


def _region(ref: TensorRef, span: _Span, item: ReadItem) -> torch.Tensor:
    """The stored elements ``item`` reads, as a strided view of the fetched span."""
    if item.type == LoadItemType.BYTE_IO:
        return span.buffer
    if any(length == 0 for length in item.lengths):
        return torch.empty(tuple(item.lengths), dtype=span.buffer.dtype)
    strides = _strides(ref.shape)
    first = sum(o * s for o, s in zip(item.storage_offsets, strides, strict=True))
    return span.buffer.as_strided(tuple(item.lengths), strides, first - span.first)


def _strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))
