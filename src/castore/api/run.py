"""Run: a named sequence of checkpoints, the verbs a training loop and an evaluator use."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from castore.api.checkpoint import Checkpoint
from castore.api.follow import follow_epochs
from castore.api.handle import SaveHandle
from castore.api.load import Keys, MapLocation, load_checkpoint
from castore.api.load_into import IncompatibleKeys, load_into_module
from castore.api.run_manifest import RunManifest
from castore.api.save import (
    PreparedCheckpoint,
    SaveInfo,
    commit_checkpoint,
    prepare_checkpoint,
)
from castore.api.validate import (
    check_count,
    check_epoch,
    check_metrics,
    check_number,
    check_step,
    check_text,
)
from castore.errors import ConflictError, InvalidCheckpointError, NotFoundError
from castore.maintenance.retention import (
    RetentionPlan,
    forget_checkpoint,
    plan_retention,
)
from castore.manifest.reader import list_epochs

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from castore.api.store import Store
    from castore.api.unchanged import SaveMemo
    from castore.manifest.records import CheckpointRecord

__all__ = ["Run"]


class Run(RunManifest):
    """A run of a store; get one with ``store.run(name)``. Parts are immutable, so parsed
    records are cached per epoch."""

    def __init__(self, store: Store, name: str) -> None:
        super().__init__(store, name)
        self._memo: SaveMemo | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: SaveHandle | None = None

    def __repr__(self) -> str:
        return f"castore.Run({self.store.url!r}, {self.name!r})"

    def save(
        self,
        state: object,
        *,
        epoch: int,
        step: int | None = None,
        metrics: Mapping[str, object] | None = None,
        blocking: bool = True,
        pickle: bool = False,
    ) -> SaveInfo | SaveHandle:
        """Commit ``state`` as checkpoint ``epoch``, storing only chunks the store lacks.

        ``state`` is a nested dict/list/tuple of tensors and plain values, or an
        ``nn.Module`` (saved as its state_dict). With ``pickle=True`` any other object
        in it (a whole ``nn.Module`` too) is kept whole: pickled, with its tensors still
        stored as chunks under their state-dict names; loading it back needs
        ``trust=True``. ``metrics`` are numbers, stored as manifest columns. With
        ``blocking=False`` the tensors changed since this process's previous save are
        copied to host memory and a ``SaveHandle`` returned; hashing, upload and commit
        run in the background while training goes on. A run has one save in flight: the
        next save (or ``wait()``, or ``store.close()``) waits for it and raises its error.

        Raises:
            InvalidCheckpointError: bad input; nothing was written.
            ConflictError: the epoch is already committed; nothing was changed.
        """
        if isinstance(state, torch.nn.Module) and not pickle:
            state = state.state_dict()
        self.wait()
        with self._context("saving", epoch):
            epoch = check_epoch(epoch)
            check_step(step)
            check_metrics(metrics)
            epochs = list_epochs(self.store.location, self.name)
            if epoch in epochs:
                raise ConflictError(
                    f"epoch {epoch} of run '{self.name}' is already committed; "
                    "save under a new epoch or delete the old one first"
                )
            earlier = [e for e in epochs if e < epoch]
            parent = self.record(earlier[-1]) if earlier else None
            prepared = prepare_checkpoint(
                state,
                epoch=epoch,
                step=step,
                metrics=metrics,
                parent=parent,
                options=self.store.options,
                memo=self._memo,
                pickle=pickle,
                copy=not blocking,
            )
            if blocking:
                return self._commit(prepared, parent)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"castore-save-{self.name}")
        future = self._executor.submit(self._commit, prepared, parent)
        self._pending = SaveHandle(future, self.name, epoch)
        return self._pending

    def wait(self) -> SaveInfo | None:
        """Wait for this run's save in flight, if any; return what it did or raise its error."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else None

    def _commit(self, prepared: PreparedCheckpoint, parent: CheckpointRecord | None) -> SaveInfo:
        epoch = prepared.epoch
        with self._context("saving", epoch):
            info, record, self._memo = commit_checkpoint(
                self.store.blobs,
                prepared,
                run=self.name,
                parent=parent,
                options=self.store.options,
            )
        self._records[epoch] = record
        self.store._trim_delta_bases(self.name)
        return info

    def _bases_held(self) -> int:
        """Bytes of delta bases the last save kept for the next (see ``deltas.BaseCache``)."""
        memo = self._memo
        return 0 if memo is None else sum(base.nbytes for base in memo.bases.values())

    def _drop_bases(self) -> None:
        memo = self._memo
        if memo is not None and memo.bases:
            self._memo = dataclasses.replace(memo, bases={})

    def load(
        self,
        epoch: int | None = None,
        *,
        best: str | None = None,
        map_location: MapLocation = None,
        keys: Keys = None,
        mmap: bool = False,
        verify: bool = True,
        trust: bool = False,
    ) -> Any:
        """Load a checkpoint: ``epoch``, the best by a metric, or by default the latest.

        ``best="score"`` picks the highest score, ``best="-loss"`` the lowest loss.
        Tensors come back bit-identical, on the CPU unless ``map_location`` says otherwise
        (a GPU is filled from pinned buffers, asynchronously, then synchronized).
        ``keys`` (glob patterns over ``Checkpoint.keys()`` names, e.g. ``"model.*"``)
        loads only the matching tensors and returns the sub-tree that holds them.
        ``mmap=True`` returns tensors that map one local file under the cache directory,
        built on first use and reused after, so memory holds only the pages touched.
        ``verify=False`` skips the BLAKE3 check, for trusted local stores only.
        ``trust=True`` unpickles objects saved whole (``save(pickle=True)``); that runs
        code named by the store, so it is off by default.

        Raises:
            UnsafeLoadError: the checkpoint holds a pickled object and ``trust`` is false;
                nothing was fetched.
            NotFoundError: no such epoch, an empty run, no checkpoint with the metric, or
                a key that matches nothing (also a ``KeyError``).
            IntegrityError: a blob does not match its digest; nothing is returned.
        """
        epoch = self._pick(epoch, best)
        with self._context("loading", epoch):
            return load_checkpoint(
                self.store.blobs,
                self.record(epoch),
                transfer=self.store.options.transfer,
                map_location=map_location,
                progress=self.store.options.progress,
                keys=keys,
                mmap=mmap,
                verify=verify,
                trust=trust,
            )

    def load_into(
        self,
        module: torch.nn.Module,
        epoch: int | None = None,
        *,
        best: str | None = None,
        strict: bool = True,
        prefix: str | None = None,
        verify: bool = True,
    ) -> IncompatibleKeys:
        """Write a checkpoint straight into ``module``'s parameters and buffers.

        Checkpoint tensor ``prefix + key`` goes to state-dict key ``key``; without
        ``prefix`` the one matching most keys is found (``"model."`` for a checkpoint
        saved as ``{"model": model.state_dict(), ...}``). Only those tensors' blobs are
        fetched, decoded into the parameters' memory where dtype and layout allow.
        Returns ``(missing_keys, unexpected_keys)`` like ``load_state_dict``.

        Raises:
            InvalidCheckpointError: a shape differs, or with ``strict`` a key is missing
                or unexpected; the module is left unchanged.
        """
        if not isinstance(module, torch.nn.Module):
            raise InvalidCheckpointError(
                f"load_into needs an nn.Module, got {type(module).__name__}; "
                "use load() for a plain tree"
            )
        epoch = self._pick(epoch, best)
        with self._context("loading", epoch):
            return load_into_module(
                self.store.blobs,
                self.record(epoch),
                module,
                strict=strict,
                prefix=prefix,
                transfer=self.store.options.transfer,
                verify=verify,
            )

    def open(self, epoch: int | None = None, *, best: str | None = None) -> Checkpoint:
        """A handle on checkpoint ``epoch`` (the latest by default, or the ``best`` by a
        metric) that fetches tensors only when they are asked for."""
        epoch = self._pick(epoch, best, "opening")
        with self._context("opening", epoch):
            self.record(epoch)
        return Checkpoint(self, epoch)

    def _pick(self, epoch: int | None, best: str | None, doing: str = "loading") -> int:
        """The epoch a load means: ``epoch``, the ``best`` by a metric, or the latest."""
        if epoch is not None and best is not None:
            raise InvalidCheckpointError("pass either epoch or best, not both")
        if best is not None:
            return self.best(best)
        if epoch is None:
            epoch = self.latest()
            if epoch is None:
                raise NotFoundError(f"run '{self.name}' has no checkpoints", run=self.name)
        with self._context(doing, epoch):
            return check_epoch(epoch)

    def follow(
        self,
        *,
        poll_s: float = 5.0,
        since: int | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Checkpoint]:
        """Yield each checkpoint as it is committed, for an evaluator that follows a run.

        Existing checkpoints after ``since`` (all by default) come first, in epoch order;
        then the run is listed every ``poll_s`` seconds and new ones are yielded as they
        appear (a late commit of a lower epoch too). With ``timeout_s`` the generator ends
        once nothing new has appeared for that long; otherwise it runs until closed.

        Until then the store's loads keep the blobs they decode, up to
        ``CodecOptions.base_cache_bytes``, so the next epoch's chunks, deltas against
        these, decode one frame each instead of their whole chain.
        """
        check_number("poll_s", poll_s, positive=True)
        if timeout_s is not None:
            check_number("timeout_s", timeout_s)
        with self.store._following():
            for epoch in follow_epochs(
                self.epochs, poll_s=poll_s, since=since, timeout_s=timeout_s
            ):
                yield Checkpoint(self, epoch)

    def delete(self, epoch: int) -> None:
        """Forget checkpoint ``epoch``: its manifest part and metrics parts go now; its
        blobs stay until garbage collection finds them unreferenced by any checkpoint
        (two ``store.gc()`` passes at least the grace period apart).

        Raises:
            NotFoundError: the epoch is not committed.
        """
        self.wait()
        with self._context("deleting", epoch):
            epoch = check_epoch(epoch)
            if epoch not in self.epochs():
                raise NotFoundError(f"run '{self.name}' has no checkpoint at epoch {epoch}")
            forget_checkpoint(self.store.location, self.name, epoch)
        self._forget_cached([epoch])

    def retain(
        self,
        *,
        keep_last: int = 0,
        keep_best: int = 0,
        metric: str = "score",
        dry_run: bool = False,
    ) -> RetentionPlan:
        """Keep the last ``keep_last`` checkpoints and the best ``keep_best`` by ``metric``
        (highest; ``"-loss"`` for lowest; annotated values count); forget the others,
        unless ``dry_run``. Returns the plan: each epoch, kept or not, and why.

        Raises:
            InvalidCheckpointError: both counts zero, or a negative count.
            NotFoundError: ``keep_best`` ranks by a metric no checkpoint has; nothing
                was forgotten.
        """
        keep_last = check_count("keep_last", keep_last)
        keep_best = check_count("keep_best", keep_best)
        check_text("metric", metric)
        self.wait()
        table = self.summary_table()
        epochs = table.column("epoch").to_pylist()
        name = metric.removeprefix("-")
        values = (self._metric_values(table, name) if keep_best else None) or {}
        plan = plan_retention(
            self.name, epochs, values, keep_last=keep_last, keep_best=keep_best, metric=metric
        )
        if not dry_run:
            try:
                plan.execute(self.store.location)
            finally:
                self._forget_cached(plan.forgotten)
        return plan

    def _forget_cached(self, epochs: Iterable[int]) -> None:
        """Drop what this Run remembers of deleted checkpoints: the epoch may be saved again."""
        for epoch in epochs:
            self._records.pop(epoch, None)
            self._summaries.pop(epoch, None)
            if self._memo is not None and self._memo.epoch == epoch:
                self._memo = None
