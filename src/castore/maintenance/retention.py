"""Retention: which checkpoints of a run to keep (pure policy), then forget the rest.

Forgetting a checkpoint deletes its manifest part and its metrics parts, nothing else:
its blobs may be shared with other checkpoints and runs, so only garbage collection,
which knows every reference, frees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.blobstore.layout import annotation_prefix, parse_annotation_name, part_key
from castore.errors import CastoreError, InvalidCheckpointError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from castore.blobstore.location import Location

__all__ = [
    "RetentionDecision",
    "RetentionPlan",
    "forget_checkpoint",
    "plan_retention",
    "rank_by_metric",
]


@dataclass(frozen=True, slots=True)
class RetentionDecision:
    """One checkpoint's fate; ``reasons`` says which rules keep it (empty: forgotten)."""

    epoch: int
    value: float | None
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    """What ``keep_last`` and ``keep_best`` decide for every checkpoint of ``run``."""

    run: str
    keep_last: int
    keep_best: int
    metric: str | None
    decisions: tuple[RetentionDecision, ...]

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(d.epoch for d in self.decisions if d.keep)

    @property
    def forgotten(self) -> tuple[int, ...]:
        return tuple(d.epoch for d in self.decisions if not d.keep)

    def execute(self, location: Location) -> None:
        """Forget every checkpoint the plan does not keep."""
        for epoch in self.forgotten:
            try:
                forget_checkpoint(location, self.run, epoch)
            except CastoreError as exc:
                exc.run = exc.run or self.run
                exc.epoch = epoch if exc.epoch is None else exc.epoch
                exc.add_note(f"while forgetting run '{self.run}' epoch {epoch}")
                raise


def rank_by_metric(values: Mapping[int, float | None], metric: str) -> list[tuple[int, float]]:
    """``(epoch, value)`` best first: highest first, lowest for ``-name``; ties go to the
    earlier epoch; epochs without a value (missing or NaN) are left out."""
    scored = [(e, v) for e, v in values.items() if v is not None and not math.isnan(v)]
    sign = 1.0 if metric.startswith("-") else -1.0
    return sorted(scored, key=lambda item: (sign * item[1], item[0]))


def plan_retention(
    run: str,
    epochs: Sequence[int],
    values: Mapping[int, float | None],
    *,
    keep_last: int = 0,
    keep_best: int = 0,
    metric: str | None = None,
) -> RetentionPlan:
    """Keep the ``keep_last`` highest epochs and the ``keep_best`` best by ``metric``.

    ``metric`` ranks highest first, ``-name`` lowest first; ``values`` maps epochs to
    that metric's value. Ties go to the earlier epoch (as ``run.best``); checkpoints
    without a value (missing or NaN) never rank, though ``keep_last`` may keep them.

    Raises:
        InvalidCheckpointError: negative counts, both zero (that would forget
            everything: use ``run.delete``), or ``keep_best`` without a metric.
        NotFoundError: ``keep_best`` asks for a metric no checkpoint has, most often
            a typo; nothing is forgotten.
    """
    if keep_last < 0 or keep_best < 0:
        raise InvalidCheckpointError("keep_last and keep_best must not be negative", run=run)
    if keep_last == 0 and keep_best == 0:
        raise InvalidCheckpointError(
            "retention needs keep_last or keep_best: keeping nothing would forget every "
            "checkpoint (delete them one by one with run.delete if that is what you want)",
            run=run,
        )
    if keep_best and not metric:
        raise InvalidCheckpointError("keep_best needs a metric to rank by", run=run)
    ordered = sorted(set(epochs))
    reasons: dict[int, list[str]] = {epoch: [] for epoch in ordered}
    if keep_last:
        for epoch in ordered[-keep_last:]:
            reasons[epoch].append(f"last {keep_last}")
    name = (metric or "").removeprefix("-")
    if keep_best:
        ranked = rank_by_metric({e: values.get(e) for e in ordered}, metric or "")
        if ordered and not ranked:
            raise NotFoundError(
                f"no checkpoint of run '{run}' has a value for '{name}'; nothing was "
                "forgotten (check the metric name)",
                run=run,
            )
        for rank, (epoch, _) in enumerate(ranked[:keep_best], start=1):
            reasons[epoch].append(f"best {keep_best} by {metric} (#{rank})")
    return RetentionPlan(
        run=run,
        keep_last=keep_last,
        keep_best=keep_best,
        metric=metric if keep_best else None,
        decisions=tuple(
            RetentionDecision(epoch, values.get(epoch) if keep_best else None, tuple(why))
            for epoch, why in reasons.items()
        ),
    )


def forget_checkpoint(location: Location, run: str, epoch: int) -> None:
    """Delete checkpoint ``epoch`` of ``run``: its metrics parts, then its manifest part.

    Metrics parts go first, so an interrupted forget leaves the checkpoint visible
    (forget it again) rather than metrics without a checkpoint that a later save of
    the same epoch would inherit; those an evaluator writes meanwhile are swept after.
    """
    _delete_annotations(location, run, epoch)
    location.delete(part_key(run, epoch))
    _delete_annotations(location, run, epoch)


def _delete_annotations(location: Location, run: str, epoch: int) -> None:
    prefix = annotation_prefix(run)
    for name in location.list_names(prefix):
        parsed = parse_annotation_name(name)
        if parsed is not None and parsed[0] == epoch:
            location.delete(f"{prefix}/{name}")
