"""Whole objects (an ``nn.Module``) as a pickle whose tensors live outside it, in chunks.

``torch.save(agent)`` pickles the module with its tensor bytes inside, so nothing
deduplicates or deltas. Here the pickler hands every tensor out by reference
(``persistent_id``): the pickle keeps only the structure (classes, attributes, hooks'
owners) and each tensor becomes an ordinary leaf of the checkpoint, named like the
module's state dict (``policy.0.weight``), so dedup, deltas, partial loads and
``load_into`` all apply. Unpickling runs code named by the store, so it happens only when
the caller trusts the store; the tensors alone are always readable as a state dict.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import torch

from castore.errors import InvalidCheckpointError

__all__ = ["PickledObject", "pickle_object", "unpickle_object"]

_TAG = "castore.tensor"
_PROTOCOL = 4


@dataclass(frozen=True, slots=True)
class PickledObject:
    """The pickle and its externalised tensors, by name relative to the object."""

    payload: bytes
    class_name: str
    tensors: tuple[tuple[str, torch.Tensor], ...]


def pickle_object(obj: object, where: str) -> PickledObject:
    """Pickle ``obj`` with every tensor replaced by a reference to ``tensors[i]``.

    A module's state-dict entries come first under their state-dict names (tied ones
    under each name, so ``load_into`` finds them all); any other tensor it holds follows
    as ``_pickled.<n>``.

    Raises:
        InvalidCheckpointError: ``obj`` cannot be pickled (a lambda, an open file...), or
            holds a tensor subclass other than ``nn.Parameter``; names ``where``.
    """
    named: list[tuple[str, torch.Tensor]] = []
    index_of: dict[int, int] = {}
    if isinstance(obj, torch.nn.Module):
        for name, tensor in obj.state_dict(keep_vars=True).items():
            index_of.setdefault(id(tensor), len(named))
            named.append((name, _plain(tensor, f"{where}.{name}")))
    extra = 0

    class _Pickler(pickle.Pickler):
        def persistent_id(self, value: object) -> tuple[str, int, bool, bool] | None:
            nonlocal extra
            if not isinstance(value, torch.Tensor):
                return None
            if id(value) not in index_of:
                index_of[id(value)] = len(named)
                named.append((f"_pickled.{extra}", _plain(value, where)))
                extra += 1
            is_parameter = isinstance(value, torch.nn.Parameter)
            return (_TAG, index_of[id(value)], is_parameter, bool(value.requires_grad))

    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=_PROTOCOL).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise InvalidCheckpointError(
            f"cannot pickle the {_class_name(obj)} at '{where}': {exc}; "
            "save its state_dict() instead"
        ) from exc
    return PickledObject(buffer.getvalue(), _class_name(obj), tuple(named))


def unpickle_object(payload: bytes, tensors: list[torch.Tensor]) -> Any:
    """Rebuild the object, putting ``tensors[i]`` back where reference ``i`` was; runs
    whatever code the pickle names, so call it only for a trusted store."""
    restored: dict[int, torch.Tensor] = {}

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> torch.Tensor:
            if not (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == _TAG):
                raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
            _, index, is_parameter, requires_grad = pid
            if index not in restored:
                tensor = tensors[index]
                if is_parameter:
                    tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
                elif requires_grad:
                    tensor.requires_grad_(True)
                restored[index] = tensor
            return restored[index]

    return _Unpickler(io.BytesIO(payload)).load()


def _plain(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """The tensor's data as a plain tensor (same storage, so ties survive)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise InvalidCheckpointError(
            f"cannot store the {type(tensor).__qualname__} tensor subclass at '{where}'; "
            "convert it to a plain tensor first"
        )
    return tensor.detach()


def _class_name(obj: object) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
