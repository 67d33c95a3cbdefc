"""Checks on save inputs, run before anything is written."""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from castore.blobstore.layout import MAX_EPOCH
from castore.errors import InvalidCheckpointError
from castore.manifest.schema import check_metric_name

__all__ = ["check_epoch", "check_metrics", "check_step"]


def check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
        raise InvalidCheckpointError(f"epoch must be an int, got {type(epoch).__name__}")
    if not 0 <= int(epoch) <= MAX_EPOCH:
        raise InvalidCheckpointError(f"epoch must be within [0, {MAX_EPOCH}], got {epoch}")
    return int(epoch)


def check_step(step: object) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or int(step) < 0:
        raise InvalidCheckpointError(f"step must be a non-negative int or None, got {step!r}")
    return int(step)


def check_metrics(metrics: Mapping[str, object] | None) -> dict[str, float]:
    """Metric names as column names and values as floats (a 1-element tensor is fine)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidCheckpointError(f"metrics must be a mapping, got {type(metrics).__name__}")
    checked: dict[str, float] = {}
    for name, value in metrics.items():
        check_metric_name(name)
        if hasattr(value, "numel") and value.numel() == 1:  # a scalar tensor
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidCheckpointError(
                f"metric {name!r} must be a real number, got {type(value).__name__}"
            )
        checked[name] = float(value)
    return checked


def check_number(name: str, value: object, *, positive: bool = False) -> float:
    """A real number, non-negative (or positive): durations and thresholds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidCheckpointError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0 or (positive and value == 0):
        raise InvalidCheckpointError(
            f"{name} must be {'positive' if positive else 'non-negative'}, got {value}"
        )
    return float(value)


def check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise InvalidCheckpointError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidCheckpointError(f"{name} must be a str, got {type(value).__name__}")
    return value
