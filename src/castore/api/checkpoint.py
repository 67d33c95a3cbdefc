"""Checkpoint: a handle on one committed checkpoint, cheap until it is loaded."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from castore.snapshot.refs import Role

if TYPE_CHECKING:
    from datetime import datetime

    from castore.api.load import MapLocation
    from castore.api.run import Run
    from castore.manifest.records import CheckpointRecord

__all__ = ["Checkpoint"]


class Checkpoint:
    """One checkpoint of a run: its manifest row now, its tensors on ``load()``.

    ``follow()`` yields these, and ``run.open(epoch)`` returns one.
    """

    def __init__(self, run: Run, epoch: int) -> None:
        self.run = run
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"castore.Checkpoint({self.run.name!r}, epoch={self.epoch})"

    @property
    def record(self) -> CheckpointRecord:
        return self.run.record(self.epoch)

    @property
    def step(self) -> int | None:
        return self.record.step

    @property
    def created_at(self) -> datetime:
        return self.record.created_at

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics saved with the checkpoint, overlaid by any annotated since."""
        return {**self.record.metrics, **self.run.annotations().get(self.epoch, {})}

    def keys(self) -> list[str]:
        """Names of the checkpoint's tensors (``model.fc.weight``...), in tree order."""
        return [ref.name for ref in self.record.tensors if ref.role != Role.STORAGE]

    def load(self, *, map_location: MapLocation = None) -> Any:
        return self.run.load(self.epoch, map_location=map_location)

    def annotate(self, metrics: dict[str, object]) -> None:
        self.run.annotate(self.epoch, metrics)
