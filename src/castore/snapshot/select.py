"""Partial loads: which entries a set of key patterns needs, and the sub-tree they make.

Patterns are ``fnmatch`` globs (case-sensitive) over flattened names: a tensor's entry
name (``model.fc.weight``), a plain value's or a container's dotted path (``epoch``,
``optimizer.param_groups``). A pattern that matches a name or one of its dotted
prefixes selects it, so ``model`` and ``model.*`` both select the whole model.

The result keeps the tree's shape with only what was selected: dict entries outside the
selection are dropped, a list or tuple keeps its length with ``None`` where an element
was left out, and a container with nothing selected inside is dropped from its parent.
``state["model"]`` of a ``keys=["model.*"]`` load is therefore the model's state dict,
``OrderedDict`` and ``_metadata`` included. An object saved whole (a pickle node) comes
back as the ``OrderedDict`` of its tensors: a partial load never unpickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from castore.errors import FormatError, NotFoundError
from castore.snapshot.refs import Role, TensorRef
from castore.snapshot.tree import state_dict_view

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["Selection", "UnknownKeyError", "needed_refs", "select", "visible_names"]

_SHOWN = 5


class UnknownKeyError(NotFoundError, KeyError):
    """A key or pattern that names nothing in the checkpoint; also a ``KeyError``."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The entries to load (manifest order, bases included) and the pruned skeleton,
    whose ``{"tensor": i}`` index ``names``: the selected tensors, in leaf order."""

    refs: tuple[TensorRef, ...]
    skeleton: str
    names: tuple[str, ...]


def visible_names(refs: Sequence[TensorRef]) -> list[str]:
    """Entry names that are tensors of the tree (every role but STORAGE), in leaf order."""
    return [ref.name for ref in refs if ref.role != Role.STORAGE]


def needed_refs(refs: Sequence[TensorRef], names: Iterable[str]) -> tuple[TensorRef, ...]:
    """``names`` plus the entries their data comes from (an alias's tensor, a view's
    storage), in manifest order; unknown names raise ``UnknownKeyError``."""
    by_name = {ref.name: ref for ref in refs}
    wanted: set[str] = set()
    for name in names:
        ref = by_name.get(name)
        if ref is None or ref.role == Role.STORAGE:
            raise unknown_key(name, visible_names(refs))
        wanted.add(name)
        if ref.base is not None:
            wanted.add(ref.base)
    return tuple(ref for ref in refs if ref.name in wanted)


def unknown_key(key: str, names: Sequence[str]) -> UnknownKeyError:
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return UnknownKeyError(
        f"no tensor of the checkpoint matches {key!r}; its keys are {shown or 'none'} "
        "(Checkpoint.keys() lists them all)",
        tensor=key,
    )


def select(skeleton: str, refs: Sequence[TensorRef], patterns: Sequence[str]) -> Selection:
    """The entries and sub-tree that ``patterns`` select; see the module docstring.

    Raises:
        UnknownKeyError: a pattern that matches nothing in the checkpoint.
    """
    names = visible_names(refs)
    used: set[str] = set()

    def matches(name: str, *, prefixes: bool) -> bool:
        candidates = [name]
        if prefixes:
            parts = name.split(".")
            candidates += [".".join(parts[:i]) for i in range(1, len(parts))]
        hit = {p for p in patterns if any(fnmatchcase(c, p) for c in candidates)}
        used.update(hit)
        return bool(hit)

    kept: list[str] = []

    def visit(node: dict[str, Any], path: tuple[str, ...], whole: bool) -> dict[str, Any] | None:
        node = state_dict_view(node)
        if "tensor" in node:
            index = node["tensor"]
            if not isinstance(index, int) or not 0 <= index < len(names):
                raise FormatError(f"skeleton refers to tensor {index!r}, which does not exist")
            if not (matches(names[index], prefixes=True) or whole):
                return None
            kept.append(names[index])
            return {"tensor": len(kept) - 1}
        dotted = ".".join(path)
        if "value" in node or "float" in node:
            return node if matches(dotted, prefixes=True) or whole else None
        whole = (bool(path) and matches(dotted, prefixes=False)) or whole
        for kind in ("list", "tuple"):
            if kind in node:
                items = [visit(child, (*path, str(i)), whole) for i, child in enumerate(node[kind])]
                if not whole and all(item is None for item in items):
                    return None
                return {kind: [{"value": None} if item is None else item for item in items]}
        for kind in ("dict", "odict"):
            if kind in node:
                pairs = [
                    [key, picked]
                    for key, child in node[kind]
                    if (picked := visit(child, (*path, str(key)), whole)) is not None
                ]
                if not whole and not pairs:
                    return None
                return {kind: pairs, **({"meta": node["meta"]} if "meta" in node else {})}
        raise FormatError(f"unknown skeleton node {sorted(node)}; written by a newer castore?")

    try:
        root = visit(json.loads(skeleton), (), False)
    except json.JSONDecodeError as exc:
        raise FormatError(f"checkpoint skeleton is not valid JSON: {exc}") from exc
    for pattern in patterns:
        if pattern not in used:
            raise unknown_key(pattern, names)
    pruned = json.dumps(root if root is not None else {"dict": []}, separators=(",", ":"))
    return Selection(needed_refs(refs, kept), pruned, tuple(kept))
