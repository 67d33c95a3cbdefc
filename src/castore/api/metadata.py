"""A training loop's checkpoint metadata (the old YAML/JSON sidecar) as castore columns.

A sidecar mixes bookkeeping (``epoch``, ``agent_step``), metrics (``score``,
``avg_reward``) and labels (``run: ppo-seed7``). castore stores the whole mapping in the
checkpoint tree, so it comes back exactly, and lifts the step and every numeric entry into
manifest columns, so ``best=``, queries and retention see them.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from castore.errors import InvalidCheckpointError, UnsafeLoadError
from castore.manifest.schema import check_metric_name
from castore.snapshot.tree import unflatten_tree

__all__ = ["SplitMetadata", "agent_tree", "saved_metadata", "split_agent_tree", "split_metadata"]

STEP_KEYS = ("agent_step", "step")
_NOT_METRICS = frozenset({"epoch", *STEP_KEYS})


@dataclass(frozen=True, slots=True)
class SplitMetadata:
    plain: dict[str, Any]
    step: int | None
    metrics: dict[str, float]


def split_metadata(metadata: Mapping[str, object] | None) -> SplitMetadata:
    """The metadata as plain values, its step and its numeric entries as metrics.

    Raises:
        InvalidCheckpointError: a key that is not a str, or a value that is not a plain
            value, a numpy scalar or a one-element tensor (or lists/dicts of those).
    """
    if metadata is None:
        return SplitMetadata({}, None, {})
    if not isinstance(metadata, Mapping):
        raise InvalidCheckpointError(f"metadata must be a mapping, got {type(metadata).__name__}")
    plain = {_key(key): _plain(value, str(key)) for key, value in metadata.items()}
    step = next((plain[k] for k in STEP_KEYS if _is_count(plain.get(k))), None)
    metrics = {
        name: float(value)
        for name, value in plain.items()
        if name not in _NOT_METRICS and _is_number(value) and _is_metric_name(name)
    }
    return SplitMetadata(plain, step, metrics)


_AGENT_KEYS = frozenset({"agent", "metadata"})


def agent_tree(agent: object, metadata: dict[str, Any]) -> dict[str, Any]:
    """The tree ``CheckpointManager.save_agent`` commits (and ``castore export`` writes)."""
    return {"agent": agent, "metadata": metadata}


def split_agent_tree(tree: object) -> tuple[Any, dict[str, Any]] | None:
    """``(agent, metadata)`` of a tree in ``agent_tree``'s layout, else None."""
    if isinstance(tree, dict) and set(tree) == _AGENT_KEYS and isinstance(tree["metadata"], dict):
        return tree["agent"], dict(tree["metadata"])
    return None


def saved_metadata(skeleton: str) -> dict[str, Any]:
    """The ``metadata`` of a checkpoint in ``agent_tree``'s layout, read from its skeleton
    alone; empty for other trees, and for metadata that is not plain values (a pickle is
    never run to describe a checkpoint)."""
    root = json.loads(skeleton)
    entries = root.get("dict", ()) if isinstance(root, dict) else ()
    if {key for key, _ in entries} != _AGENT_KEYS:
        return {}
    for key, node in entries:
        if key == "metadata":
            try:
                value = unflatten_tree(json.dumps(node), [])
            except UnsafeLoadError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidCheckpointError(f"metadata keys must be str, got {key!r:.80}")
    return key


def _plain(value: object, where: str) -> Any:
    """numpy scalars and one-element tensors as Python numbers; containers recursively."""
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {_key(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}.{i}") for i, v in enumerate(value)]
    raise InvalidCheckpointError(
        f"metadata '{where}' is a {type(value).__name__}; metadata holds numbers, strings, "
        "booleans, None, and lists or dicts of them"
    )


def _is_number(value: object) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _is_metric_name(name: str) -> bool:
    try:
        check_metric_name(name)
    except InvalidCheckpointError:
        return False
    return True


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
