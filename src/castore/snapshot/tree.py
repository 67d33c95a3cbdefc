"""Checkpoint trees <-> a JSON skeleton plus a flat list of named tensors.

The skeleton keeps every container and plain value; each tensor is replaced by its index
in the leaf list. Node forms (one key each):

```
{"tensor": i}                      the i-th leaf
{"value": v}                       None, bool, int, str, or a finite float
{"float": "nan" | "inf" | "-inf"}  a non-finite float (strict JSON has none)
{"list": [node, ...]}   {"tuple": [node, ...]}
{"dict": [[key, node], ...]}       keys: None, bool, int, str, finite float
{"odict": [[key, node], ...], "meta": {...}}   an OrderedDict; "meta" is a state
                                   dict's ``_metadata`` (module versions), when present
```
Leaf names join the path with "." (``model.fc.weight``, ``optimizer.state.0.exp_avg``);
a name already taken gets ``#2``, ``#3``... so every name is unique.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from castore.errors import FormatError, InvalidCheckpointError

__all__ = ["FlatTree", "flatten_tree", "unflatten_tree"]

_PLAIN_TYPES = (type(None), bool, int, str, float)


@dataclass(frozen=True, slots=True)
class FlatTree:
    skeleton: str
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]


def flatten_tree(obj: object) -> FlatTree:
    """Split ``obj`` into a skeleton and its tensors; refuse anything else with its path."""
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    taken: set[str] = set()

    def unique(name: str) -> str:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}#{n}"
        taken.add(candidate)
        return candidate

    def visit(node: object, path: tuple[str, ...]) -> dict[str, Any]:
        if isinstance(node, torch.Tensor):
            names.append(unique(".".join(path) or "tensor"))
            tensors.append(node)
            return {"tensor": len(tensors) - 1}
        kind = type(node)
        if kind in _PLAIN_TYPES:
            return _plain_node(node, path)
        if kind is list or kind is tuple:
            children = [visit(child, (*path, str(i))) for i, child in enumerate(node)]  # type: ignore[arg-type]
            return {kind.__name__: children}
        if kind is dict or kind is OrderedDict:
            pairs = [
                [_check_key(key, path), visit(child, (*path, str(key)))]
                for key, child in node.items()  # type: ignore[attr-defined]
            ]
            if kind is dict:
                return {"dict": pairs}
            meta = getattr(node, "_metadata", None)
            return {"odict": pairs, **({"meta": _json_meta(meta, path)} if meta else {})}
        raise InvalidCheckpointError(
            f"cannot store a {kind.__module__}.{kind.__qualname__} at "
            f"'{'.'.join(path) or '<root>'}': leaves must be tensors or None/bool/int/float/str "
            "inside dict, OrderedDict, list or tuple (save an nn.Module as its state_dict())"
        )

    root = visit(obj, ())
    return FlatTree(json.dumps(root, separators=(",", ":")), tuple(names), tuple(tensors))


def unflatten_tree(skeleton: str, tensors: list[torch.Tensor]) -> Any:
    """Rebuild the tree, placing ``tensors[i]`` where the skeleton says ``{"tensor": i}``."""
    try:
        root = json.loads(skeleton)
    except json.JSONDecodeError as exc:
        raise FormatError(f"checkpoint skeleton is not valid JSON: {exc}") from exc

    def build(node: dict[str, Any]) -> Any:
        if not isinstance(node, dict) or len(node) not in (1, 2):
            raise FormatError(f"malformed skeleton node {node!r:.80}")
        if "tensor" in node:
            index = node["tensor"]
            if not isinstance(index, int) or not 0 <= index < len(tensors):
                raise FormatError(f"skeleton refers to tensor {index!r}, which does not exist")
            return tensors[index]
        if "value" in node:
            return node["value"]
        if "float" in node:
            return float(node["float"])
        if "list" in node:
            return [build(child) for child in node["list"]]
        if "tuple" in node:
            return tuple(build(child) for child in node["tuple"])
        if "dict" in node:
            return {key: build(child) for key, child in node["dict"]}
        if "odict" in node:
            result = OrderedDict((key, build(child)) for key, child in node["odict"])
            if "meta" in node:
                result._metadata = node["meta"]  # type: ignore[attr-defined]
            return result
        raise FormatError(f"unknown skeleton node {sorted(node)}; written by a newer castore?")

    return build(root)


def _plain_node(value: object, path: tuple[str, ...]) -> dict[str, Any]:
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, str):
        _check_text(value, path)
    return {"value": value}


def _check_key(key: object, path: tuple[str, ...]) -> object:
    if type(key) not in _PLAIN_TYPES or (isinstance(key, float) and not math.isfinite(key)):
        raise InvalidCheckpointError(
            f"dict key {key!r} at '{'.'.join(path) or '<root>'}' is not storable: keys must "
            "be None, bool, int, str or a finite float"
        )
    if isinstance(key, str):
        _check_text(key, path)
    return key


def _check_text(text: str, path: tuple[str, ...]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidCheckpointError(
            f"string at '{'.'.join(path) or '<root>'}' is not valid UTF-8 text"
        ) from exc


def _json_meta(meta: object, path: tuple[str, ...]) -> object:
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise InvalidCheckpointError(
            f"state dict _metadata at '{'.'.join(path) or '<root>'}' is not JSON-storable"
        ) from exc
