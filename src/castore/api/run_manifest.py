"""RunManifest: what a run has committed, read from its parts (cached: parts never
change) with annotations merged in. ``Run`` adds the verbs that write and load."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

from castore.api.validate import check_epoch, check_metrics, check_text
from castore.errors import CastoreError, InvalidCheckpointError, NotFoundError
from castore.maintenance.retention import rank_by_metric
from castore.manifest.annotations import AnnotationReader, merge_metrics, write_annotation
from castore.manifest.query import concat_summaries
from castore.manifest.reader import list_epochs, read_part, read_summary
from castore.manifest.schema import check_metric_name

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from datetime import datetime

    import pandas as pd
    import pyarrow as pa

    from castore.api.store import Store
    from castore.manifest.records import CheckpointRecord

__all__ = ["RunManifest"]


class RunManifest:
    """A run's committed checkpoints, metrics and annotations, read-only."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self._records: dict[int, CheckpointRecord] = {}
        self._summaries: dict[int, pa.Table] = {}
        self._annotations = AnnotationReader(store.location, name)

    def annotate(self, epoch: int, metrics: Mapping[str, object]) -> None:
        """Attach metrics to a committed checkpoint (an evaluator's score).

        Each call writes its own immutable part, so an evaluator annotating while the
        trainer saves, or two evaluators at once, never lose each other's writes. The
        metrics show in ``checkpoints()``, ``best=`` and queries; a later annotation of
        the same metric wins over an earlier one and over the value saved with it.

        Raises:
            NotFoundError: the epoch is not committed.
            InvalidCheckpointError: bad metric names or values; nothing was written.
        """
        with self._context("annotating", epoch):
            epoch = check_epoch(epoch)
            checked = check_metrics(metrics)
            if not checked:
                raise InvalidCheckpointError("annotate needs at least one metric")
            commit = self.record(epoch).created_at
            write_annotation(
                self.store.location, self.name, epoch, checked, checkpoint_created_at=commit
            )

    def annotations(self) -> dict[int, dict[str, float]]:
        """Annotated metrics by epoch, merged in the order they were written."""
        return self._annotations.metrics_by_epoch(_commits(self.summary_table(annotated=False)))

    def epochs(self) -> list[int]:
        """Committed epochs, ascending."""
        return list_epochs(self.store.location, self.name)

    def latest(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def best(self, metric: str) -> int:
        """The epoch with the highest ``metric`` (lowest for ``-metric``); ties go to the
        earliest epoch, and checkpoints without the metric are passed over."""
        name = check_text("metric", metric).removeprefix("-")
        values = self._metric_values(self.summary_table(), name)
        if values is None:
            raise NotFoundError(
                f"no checkpoint of run '{self.name}' has metric '{name}'", run=self.name
            )
        ranked = rank_by_metric(values, metric)
        if not ranked:
            raise NotFoundError(
                f"no checkpoint of run '{self.name}' has a value for '{name}'", run=self.name
            )
        return ranked[0][0]

    def ranked(self, metric: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` of the checkpoints with ``metric``, best first (as ``best``)."""
        name = check_text("metric", metric).removeprefix("-")
        return rank_by_metric(self._metric_values(self.summary_table(), name) or {}, metric)

    @staticmethod
    def _metric_values(table: pa.Table, name: str) -> dict[int, float | None] | None:
        """Each epoch's value of metric ``name`` in a summary table, or None when no
        checkpoint has the column."""
        if check_metric_name(name) not in table.column_names:
            return None
        epochs = table.column("epoch").to_pylist()
        return dict(zip(epochs, table.column(name).to_pylist(), strict=True))

    def checkpoints(self) -> pd.DataFrame:
        """One row per checkpoint, by epoch: step, byte accounting and a column per metric."""
        return self.summary_table().to_pandas()

    def record(self, epoch: int) -> CheckpointRecord:
        """The parsed manifest part of ``epoch`` (cached: parts never change)."""
        epoch = check_epoch(epoch)
        if epoch not in self._records:
            self._records[epoch] = read_part(self.store.location, self.name, epoch)
        return self._records[epoch]

    def summary_table(self, *, annotated: bool = True) -> pa.Table:
        """Arrow table of every checkpoint's summary row, sorted by epoch, with annotated
        metrics merged in (unless not ``annotated``)."""
        tables = []
        for epoch in self.epochs():
            if epoch not in self._summaries:
                self._summaries[epoch] = read_summary(self.store.location, self.name, epoch)
            tables.append(self._summaries[epoch])
        summary = concat_summaries(tables)
        if not annotated:
            return summary
        return merge_metrics(summary, self._annotations.metrics_by_epoch(_commits(summary)))

    @contextmanager
    def _context(self, doing: str, epoch: object) -> Iterator[None]:
        """Name the run and epoch on every castore error raised inside."""
        try:
            yield
        except CastoreError as exc:
            exc.run = exc.run or self.name
            if exc.epoch is None and isinstance(epoch, int):
                exc.epoch = epoch
            note = f"while {doing} run '{self.name}' epoch {epoch}"
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise


def _commits(summary: pa.Table) -> dict[int, datetime]:
    """Each epoch's commit time in a summary table: what an annotation is bound to."""
    epochs = summary.column("epoch").to_pylist()
    return dict(zip(epochs, summary.column("created_at").to_pylist(), strict=True))
