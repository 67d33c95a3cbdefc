"""A host-memory copy of a checkpoint tree, for saves that finish in the background.

Each distinct storage is copied once and every tensor is rebuilt as the same view of
its copy, so tied weights and views stay tied; conjugate and negative views are copied
by value. The copy is checked like a save's input, so bad input fails before training
goes on.
"""

from __future__ import annotations

from typing import Any

import torch

from castore.snapshot.tensors import check_tensor
from castore.snapshot.tree import flatten_tree, unflatten_tree

__all__ = ["copy_to_host"]


def copy_to_host(tree: object, *, pickle: bool = False) -> Any:
    """The same tree with every tensor copied to CPU memory the caller no longer touches.

    With ``pickle``, objects kept whole are copied through their own pickle, made here,
    so unpickling it runs nothing the caller did not already hold."""
    flat = flatten_tree(tree, pickle=pickle)
    copies: list[torch.Tensor] = []
    storages: dict[tuple[str, int], torch.UntypedStorage] = {}
    for name, tensor in zip(flat.names, flat.tensors, strict=True):
        check_tensor(tensor, name)
        tensor = tensor.detach()
        if tensor.is_conj() or tensor.is_neg():
            copies.append(tensor.resolve_conj().resolve_neg().to("cpu", copy=True))
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in storages:
            storages[key] = storage.cpu() if tensor.device.type != "cpu" else storage.clone()
        copy = torch.empty(0, dtype=tensor.dtype)
        copy.set_(storages[key], tensor.storage_offset(), tensor.shape, tensor.stride())
        copies.append(copy)
    return unflatten_tree(flat.skeleton, copies, trust=True)
