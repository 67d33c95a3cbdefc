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
{"pickle": b64, "class": "pkg.Agent", "tensors": [[name, i], ...]}
                                   an object saved whole (``pickle=True``, see
                                   ``snapshot.pickled``): its pickle in base64, its class,
                                   and its tensors by name relative to it, as leaves
```
Leaf names join the path with "." (``model.fc.weight``, ``optimizer.state.0.exp_avg``);
a name already taken gets ``#2``, ``#3``... so every name is unique.

A pickle node is unpickled only with ``trust=True``; ``state_dict_view`` turns each into
the ``odict`` of its tensors, which needs no trust.
"""

from __future__ import annotations

import base64
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from castore.errors import FormatError, InvalidCheckpointError, UnsafeLoadError
from castore.snapshot.pickled import pickle_object, unpickle_object

__all__ = [
    "FlatTree",
    "flatten_tree",
    "pickled_objects",
    "refuse_pickles",
    "state_dict_view",
    "unflatten_tree",
]

_PLAIN_TYPES = (type(None), bool, int, str, float)


@dataclass(frozen=True, slots=True)
class FlatTree:
    skeleton: str
    names: tuple[str, ...]
    tensors: tuple[torch.Tensor, ...]


def flatten_tree(obj: object, *, pickle: bool = False) -> FlatTree:
    """Split ``obj`` into a skeleton and its tensors; refuse anything else with its path,
    or with ``pickle`` keep it whole as a pickle node."""
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
        if pickle:
            where = ".".join(path) or "<root>"
            pickled = pickle_object(node, where)
            leaves = []
            for name, tensor in pickled.tensors:
                names.append(unique(".".join((*path, name))))
                tensors.append(tensor)
                leaves.append([name, len(tensors) - 1])
            payload = base64.b64encode(pickled.payload).decode("ascii")
            return {"pickle": payload, "class": pickled.class_name, "tensors": leaves}
        raise InvalidCheckpointError(
            f"cannot store a {kind.__module__}.{kind.__qualname__} at "
            f"'{'.'.join(path) or '<root>'}': leaves must be tensors or None/bool/int/float/str "
            "inside dict, OrderedDict, list or tuple (save an nn.Module as its state_dict(), "
            "or whole with pickle=True)"
        )

    root = visit(obj, ())
    return FlatTree(json.dumps(root, separators=(",", ":")), tuple(names), tuple(tensors))


def unflatten_tree(skeleton: str, tensors: list[torch.Tensor], *, trust: bool = False) -> Any:
    """Rebuild the tree, placing ``tensors[i]`` where the skeleton says ``{"tensor": i}``;
    pickle nodes are unpickled only with ``trust``.

    Raises:
        UnsafeLoadError: the tree holds a pickled object and ``trust`` is false.
    """
    root = _parse(skeleton)

    def build(node: dict[str, Any]) -> Any:
        if not isinstance(node, dict) or len(node) not in (1, 2, 3):
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
        if "pickle" in node:
            if not trust:
                refuse_pickles(skeleton)
            leaves = [build({"tensor": index}) for _, index in node["tensors"]]
            return unpickle_object(base64.b64decode(node["pickle"]), leaves)
        raise FormatError(f"unknown skeleton node {sorted(node)}; written by a newer castore?")

    return build(root)


def pickled_objects(skeleton: str) -> list[tuple[str, str]]:
    """``(path, class)`` of every pickled object in the tree, in tree order."""
    found: list[tuple[str, str]] = []

    def walk(node: object, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if "pickle" in node:
            found.append((".".join(path) or "<root>", str(node.get("class"))))
            return
        for kind in ("list", "tuple"):
            for i, child in enumerate(node.get(kind, ())):
                walk(child, (*path, str(i)))
        for kind in ("dict", "odict"):
            for key, child in node.get(kind, ()):
                walk(child, (*path, str(key)))

    walk(_parse(skeleton), ())
    return found


def refuse_pickles(skeleton: str) -> None:
    """Raise ``UnsafeLoadError`` naming the first pickled object, if the tree has one."""
    objects = pickled_objects(skeleton)
    if objects:
        path, class_name = objects[0]
        raise UnsafeLoadError(
            f"the checkpoint holds a pickled {class_name} at '{path}'"
            + (f" and {len(objects) - 1} more" if len(objects) > 1 else "")
            + "; unpickling runs code from the store, so pass trust=True only if you trust "
            "whoever wrote it. Without unpickling: load_into(module) writes its weights "
            "into a module you build, and load(keys='*') returns them as state dicts"
        )


def state_dict_view(node: dict[str, Any]) -> dict[str, Any]:
    """A pickle node as the ``odict`` of its tensors, by name; other nodes unchanged."""
    if "pickle" not in node:
        return node
    return {"odict": [[name, {"tensor": index}] for name, index in node["tensors"]]}


def _parse(skeleton: str) -> Any:
    try:
        return json.loads(skeleton)
    except json.JSONDecodeError as exc:
        raise FormatError(f"checkpoint skeleton is not valid JSON: {exc}") from exc


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
