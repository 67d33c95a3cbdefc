"""CheckpointManager: the checkpoint calls a training loop already makes, over castore.

It keeps the vocabulary of the usual hand-written manager (``save_agent``,
``load_agent``, ``find_best_checkpoint``...) so a loop changes one constructor, while every
checkpoint becomes a castore commit: deduplicated, delta-encoded, queryable. Layout:

- the run ``run_name`` holds one checkpoint per saved epoch, the tree
  ``{"agent": <module or state dict>, "metadata": {...}}``; the step and the numeric
  metadata entries are manifest columns too (``api.metadata``);
- the run ``<run_name>.trainer`` holds the trainer state (optimizer, epoch, step); only
  its latest checkpoint is kept, as the old loop kept one ``trainer_state.pt``.

An agent that is not a state dict (a whole ``nn.Module``) is saved whole, its tensors
as chunks; loading one back needs ``trust=True``. Checkpoints are named by URIs (``api.uri``).
"""

from __future__ import annotations

import numbers
import random
from typing import TYPE_CHECKING, Any

import torch

from castore.api.metadata import (
    SplitMetadata,
    agent_tree,
    saved_metadata,
    split_agent_tree,
    split_metadata,
)
from castore.api.ranks import on_rank_zero
from castore.api.save import SaveInfo
from castore.api.store import open_store
from castore.api.uri import checkpoint_uri, load
from castore.api.validate import check_count, check_epoch, check_text
from castore.errors import InvalidCheckpointError, NotFoundError
from castore.manifest.schema import RESERVED_COLUMNS

if TYPE_CHECKING:
    from collections.abc import Mapping

    from castore.api.load import MapLocation
    from castore.api.run import Run
    from castore.api.store import Store

__all__ = ["TRAINER_SUFFIX", "CheckpointManager"]

TRAINER_SUFFIX = ".trainer"
STRATEGIES = ("top", "latest", "rand", "all")


class CheckpointManager:
    """Save and find a training run's checkpoints in the store at ``store_url``.

    ``keep_last``/``keep_best`` apply retention after each save (the latest checkpoint
    is always kept, so a restart resumes from it); forgotten checkpoints' blobs go at the
    next ``castore gc``. ``trust=True`` lets ``load_agent`` unpickle whole modules.
    ``create=False`` refuses to create a store that does not exist yet.
    Storage options (credentials, endpoints) go to fsspec. Under ``torch.distributed``,
    every rank calls the save methods; rank 0 writes and all ranks get the result.
    """

    def __init__(
        self,
        store_url: str,
        run_name: str,
        *,
        keep_last: int | None = None,
        keep_best: int | None = None,
        metric: str = "score",
        trust: bool = False,
        create: bool = True,
        **storage_options: Any,
    ) -> None:
        self.keep_last = check_count("keep_last", keep_last or 0)
        self.keep_best = check_count("keep_best", keep_best or 0)
        self.metric = check_text("metric", metric)
        self.trust = trust
        self.store: Store = open_store(store_url, create=create, **storage_options)
        self.run: Run = self.store.run(run_name)
        self.trainer_run: Run = self.store.run(run_name + TRAINER_SUFFIX)
        self._storage_options = storage_options

    def __repr__(self) -> str:
        return f"castore.CheckpointManager({self.store.url!r}, {self.run.name!r})"

    def uri(self, epoch: int | None = None) -> str:
        """The URI of checkpoint ``epoch`` of this run (the latest when None)."""
        return checkpoint_uri(self.store, self.run.name, epoch)

    def save_agent(
        self, agent: object, epoch: int, metadata: Mapping[str, object] | None = None
    ) -> str:
        """Commit ``agent`` and ``metadata`` as checkpoint ``epoch``; returns its URI.

        A state dict is stored as it is; any other object (a whole ``nn.Module``, as
        ``torch.save(agent)`` would take) is pickled with its tensors stored as chunks.

        Raises:
            InvalidCheckpointError: bad input; nothing was written.
            ConflictError: the epoch is already committed.
        """
        epoch = check_epoch(epoch)
        meta = split_metadata(metadata)

        def write() -> str:
            self.commit_agent(agent, epoch, meta)
            self._retain()
            return self.uri(epoch)

        return on_rank_zero(write)

    def _retain(self) -> None:
        """Apply the retention options; while no checkpoint has the ranking metric yet,
        only ``keep_last`` applies (the save itself has succeeded either way)."""
        if not (self.keep_last or self.keep_best):
            return
        try:
            self.run.retain(
                keep_last=max(self.keep_last, 1), keep_best=self.keep_best, metric=self.metric
            )
        except NotFoundError:
            if self.keep_last:
                self.run.retain(keep_last=self.keep_last)

    def commit_agent(self, agent: object, epoch: int, meta: SplitMetadata) -> SaveInfo:
        """The save behind ``save_agent``, on this process, without retention."""
        info = self.run.save(
            agent_tree(agent, meta.plain),
            epoch=epoch,
            step=meta.step,
            metrics=meta.metrics,
            pickle=True,
        )
        assert isinstance(info, SaveInfo)
        return info

    def load_agent(
        self,
        epoch: int | str | None = None,
        *,
        trust: bool | None = None,
        map_location: MapLocation = None,
    ) -> Any:
        """The agent saved at ``epoch`` (an int or a checkpoint URI); the latest when None,
        or None when the run has no checkpoint yet, so the loop can start fresh.

        Raises:
            NotFoundError: the epoch (or the URI's checkpoint) does not exist.
            UnsafeLoadError: the agent was saved whole and neither ``trust`` here nor
                the manager's allows unpickling it.
        """
        trust = self.trust if trust is None else trust
        if isinstance(epoch, str):
            tree = load(epoch, trust=trust, map_location=map_location, **self._storage_options)
        else:
            if epoch is None and self.run.latest() is None:
                return None
            tree = self.run.load(epoch, trust=trust, map_location=map_location)
        split = split_agent_tree(tree)
        return tree if split is None else split[0]

    def save_trainer_state(
        self, optimizer: torch.optim.Optimizer | Mapping[str, object], epoch: int, agent_step: int
    ) -> str:
        """Keep the optimizer's state with ``epoch`` and ``agent_step`` for a restart; it
        replaces the previous trainer state. Returns its URI."""
        epoch = check_epoch(epoch)
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizer = optimizer.state_dict()
        tree = {"optimizer_state": optimizer, "epoch": epoch, "agent_step": agent_step}
        return on_rank_zero(lambda: self._replace_trainer_state(tree, epoch, agent_step))

    def _replace_trainer_state(self, tree: dict[str, object], epoch: int, step: int) -> str:
        if epoch in self.trainer_run.epochs():
            self.trainer_run.delete(epoch)
        self.trainer_run.save(tree, epoch=epoch, step=step)
        self.trainer_run.retain(keep_last=1)
        return checkpoint_uri(self.store, self.trainer_run.name, epoch)

    def load_trainer_state(self, *, map_location: MapLocation = None) -> dict[str, Any] | None:
        """The latest trainer state (``optimizer_state``, ``epoch``, ``agent_step``), or
        None when none was saved."""
        if self.trainer_run.latest() is None:
            return None
        return self.trainer_run.load(map_location=map_location)

    def find_best_checkpoint(self, metric: str | None = None) -> str | None:
        """The URI of the checkpoint with the highest ``metric`` (``"-loss"``: lowest),
        or None when no checkpoint has it."""
        try:
            return self.uri(self.run.best(metric or self.metric))
        except NotFoundError:
            return None

    def find_checkpoints_by_score(self, min_score: float, metric: str | None = None) -> list[str]:
        """URIs of the checkpoints whose ``metric`` is at least ``min_score``, best first."""
        if isinstance(min_score, bool) or not isinstance(min_score, numbers.Real):
            raise InvalidCheckpointError(
                f"min_score must be a number, got {type(min_score).__name__}"
            )
        ranked = self.run.ranked(metric or self.metric)
        return [self.uri(epoch) for epoch, value in ranked if value >= min_score]

    def list_all_checkpoints(self) -> list[dict[str, Any]]:
        """Every checkpoint by epoch: its URI, epoch, metadata, step and metrics
        (annotated metrics included, winning over saved ones)."""
        table = self.run.summary_table()
        metrics = [name for name in table.column_names if name not in RESERVED_COLUMNS]
        rows = []
        for summary in table.select(["epoch", "step", *metrics]).to_pylist():
            epoch = summary.pop("epoch")
            step = summary.pop("step")
            row: dict[str, Any] = {"uri": self.uri(epoch), "epoch": epoch}
            saved = saved_metadata(self.run.record(epoch).skeleton)
            row.update((k, v) for k, v in saved.items() if k != "epoch")
            if step is not None:
                row.setdefault("agent_step", step)
            row.update((k, v) for k, v in summary.items() if v is not None)
            rows.append(row)
        return rows

    def select(
        self,
        strategy: str = "top",
        n: int = 1,
        metric: str | None = None,
        *,
        seed: int | None = None,
    ) -> list[str]:
        """URIs picked by ``strategy``: ``"top"`` the ``n`` best by ``metric``,
        ``"latest"`` the ``n`` newest (newest first), ``"rand"`` ``n`` at random
        (``seed`` for repeatability), ``"all"`` every one by epoch."""
        if strategy not in STRATEGIES:
            raise InvalidCheckpointError(
                f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        n = check_count("n", n)
        epochs = self.run.epochs()
        if strategy == "all":
            picked = epochs
        elif strategy == "latest":
            picked = epochs[::-1][:n]
        elif strategy == "rand":
            picked = sorted(random.Random(seed).sample(epochs, min(n, len(epochs))))
        else:
            picked = [epoch for epoch, _ in self.run.ranked(metric or self.metric)[:n]]
        return [self.uri(epoch) for epoch in picked]

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.store.close()
