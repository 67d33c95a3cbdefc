"""Tensors -> manifest entries: validation, tied storage, and the bytes to store.

Tensors that share one storage are found by (device, storage pointer). Identical views
(tied weights) become one TENSOR entry plus ALIAS entries; different views of one storage
(of one dtype) become a STORAGE entry holding the spanned bytes plus VIEW entries, so
they come back sharing storage. Every other tensor is stored as its own row-major bytes.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass

import torch

from castore.errors import InvalidCheckpointError
from castore.snapshot.dtypes import code_of
from castore.snapshot.refs import Role

__all__ = [
    "EntryPlan",
    "PlannedEntry",
    "check_tensor",
    "host_bytes",
    "memory_bytes",
    "plan_entries",
    "replan_entries",
]

_ALLOWED_TYPES = (torch.Tensor, torch.nn.Parameter)


@dataclass(frozen=True, slots=True)
class PlannedEntry:
    """A manifest entry before its chunks are known; ``source`` supplies data entries' bytes."""

    name: str
    role: Role
    dtype: str
    shape: tuple[int, ...]
    device: str
    source: torch.Tensor | None = None
    base: str | None = None
    storage_offset: int = 0
    stride: tuple[int, ...] = ()

    @property
    def nbytes(self) -> int:
        return 0 if self.source is None else self.source.numel() * self.source.element_size()

    @property
    def element_size(self) -> int:
        return 1 if self.source is None else self.source.element_size()


def check_tensor(tensor: torch.Tensor, name: str) -> None:
    """Refuse tensors castore cannot store faithfully, before anything is written."""
    problem = None
    if type(tensor) not in _ALLOWED_TYPES:
        problem = f"tensor subclass {type(tensor).__qualname__} is not supported"
    elif tensor.is_nested:
        problem = "nested tensors are not supported; unbind them into a list"
    elif tensor.layout != torch.strided:
        problem = f"{tensor.layout} tensors are not supported; call .to_dense() first"
    elif tensor.is_quantized:
        problem = "quantized tensors are not supported; dequantize() first"
    elif tensor.device.type == "meta":
        problem = "meta tensors have no data to store; materialise them first"
    if problem is not None:
        raise InvalidCheckpointError(problem, tensor=name)
    code_of(tensor.dtype, tensor=name)


def plan_entries(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> list[PlannedEntry]:
    """One entry per tensor, in order, plus a STORAGE entry before views that need one."""
    for name, tensor in zip(names, tensors, strict=True):
        check_tensor(tensor, name)

    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, tensor in enumerate(tensors):
        storage = tensor.untyped_storage()
        if storage.nbytes() > 0 and tensor.numel() > 0 and not _lazy_view(tensor):
            groups[(str(tensor.device), storage.data_ptr())].append(index)

    entries: list[PlannedEntry] = []
    emitted: dict[int, str] = {}
    taken = set(names)
    for index, (name, tensor) in enumerate(zip(names, tensors, strict=True)):
        if index in emitted:
            continue
        group = groups.get((str(tensor.device), tensor.untyped_storage().data_ptr()), [index])
        if tensor.numel() == 0 or len(group) == 1 or index not in group:
            entries.append(_own_bytes(name, tensor))
        elif all(_same_view(tensor, tensors[i]) for i in group):
            entries.append(_own_bytes(name, tensor))
            for i in group[1:]:
                entries.append(_alias(names[i], tensors[i], name))
                emitted[i] = names[i]
        elif len({tensors[i].dtype for i in group}) == 1:
            entries.extend(
                _shared_storage([names[i] for i in group], [tensors[i] for i in group], taken)
            )
            emitted.update({i: names[i] for i in group})
        else:
            entries.append(_own_bytes(name, tensor))
    return _in_name_order(entries, names)


@dataclass(frozen=True, slots=True)
class EntryPlan:
    """``plan_entries``' result with what it was planned from, so that the same state saved
    again is not planned again (``replan_entries``).

    ``signatures`` holds, per tensor, everything of it ``plan_entries`` reads (None when
    the plan is not reusable: it has a STORAGE entry, whose source is made for the plan);
    ``leaves`` the leaf index of each entry's source, -1 for entries without one.
    """

    names: tuple[str, ...]
    signatures: tuple[tuple[object, ...], ...] | None
    entries: tuple[PlannedEntry, ...]
    leaves: tuple[int, ...]


def replan_entries(
    names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], previous: EntryPlan | None
) -> EntryPlan:
    """``plan_entries(names, tensors)``, taken from ``previous`` when that was planned for
    the same names and tensors of the same signature (type, dtype, layout, device, shape,
    strides, storage and its offset, conjugate and negative bits): the plan is a function
    of exactly these, so it is the same plan, its entries given the new tensors as sources.
    """
    signatures = _signatures(tensors)
    if (
        previous is not None
        and signatures is not None
        and previous.signatures == signatures
        and previous.names == names
    ):
        if all(
            leaf < 0 or entry.source is tensors[leaf]
            for entry, leaf in zip(previous.entries, previous.leaves, strict=True)
        ):
            return previous
        entries = tuple(
            entry if leaf < 0 else _with_source(entry, tensors[leaf])
            for entry, leaf in zip(previous.entries, previous.leaves, strict=True)
        )
        return EntryPlan(names, signatures, entries, previous.leaves)
    planned = tuple(plan_entries(names, tensors))
    position = {name: i for i, name in enumerate(names)}
    leaves = tuple(position.get(e.name, -1) if e.source is not None else -1 for e in planned)
    reusable = signatures is not None and all(
        e.source is None or (leaf >= 0 and e.source is tensors[leaf])
        for e, leaf in zip(planned, leaves, strict=True)
    )
    return EntryPlan(names, signatures if reusable else None, planned, leaves)


def _signatures(tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[object, ...], ...] | None:
    """Each tensor's signature (see ``replan_entries``); None if one is not a plain strided
    tensor, which ``plan_entries`` refuses or plans without a storage to compare."""
    signatures = []
    for tensor in tensors:
        if (
            type(tensor) not in _ALLOWED_TYPES
            or tensor.layout is not torch.strided
            or tensor.is_nested
            or tensor.is_quantized
            or tensor.is_meta
        ):
            return None
        storage = tensor.untyped_storage()
        signatures.append(
            (
                type(tensor),
                tensor.dtype,
                tensor.device,
                tensor.shape,
                tensor.stride(),
                tensor.storage_offset(),
                storage.data_ptr(),
                storage.nbytes(),
                tensor.is_conj(),
                tensor.is_neg(),
            )
        )
    return tuple(signatures)


def _with_source(entry: PlannedEntry, source: torch.Tensor) -> PlannedEntry:
    return entry if entry.source is source else dataclasses.replace(entry, source=source)


def host_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's row-major bytes in CPU memory, without a copy when already there.

    Conjugate and negative views are resolved to the values they show; a flattened
    tensor keeps an odd stride when it has one element, so that case is copied too.
    """
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.resolve_conj().resolve_neg().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        flat = flat.clone(memory_format=torch.contiguous_format)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def memory_bytes(tensor: torch.Tensor) -> memoryview | None:
    """``host_bytes`` where they are the tensor's own memory, read in place: a contiguous CPU
    tensor that is no lazy conjugate or negative view. None where they would be a copy."""
    if (
        tensor.device.type != "cpu"
        or not tensor.is_contiguous()
        or tensor.is_conj()
        or tensor.is_neg()
    ):
        return None
    flat = tensor.detach().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        return None
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _own_bytes(name: str, tensor: torch.Tensor) -> PlannedEntry:
    return PlannedEntry(
        name=name,
        role=Role.TENSOR,
        dtype=code_of(tensor.dtype),
        shape=tuple(tensor.shape),
        device=str(tensor.device),
        source=tensor,
    )


def _alias(name: str, tensor: torch.Tensor, base: str) -> PlannedEntry:
    return PlannedEntry(
        name=name,
        role=Role.ALIAS,
        dtype=code_of(tensor.dtype),
        shape=tuple(tensor.shape),
        device=str(tensor.device),
        base=base,
    )


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}#{n}"
    taken.add(candidate)
    return candidate


def _lazy_view(tensor: torch.Tensor) -> bool:
    """Conjugate and negative views show values their storage does not hold: they are
    stored by value, never as views of a shared storage."""
    return tensor.is_conj() or tensor.is_neg()


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.storage_offset() == b.storage_offset()
    )


def _shared_storage(
    names: list[str], tensors: list[torch.Tensor], taken: set[str]
) -> list[PlannedEntry]:
    """A STORAGE entry spanning every view, then one VIEW entry per tensor. Its name,
    ``<first view>@storage``, gets a ``#n`` suffix if a leaf already has it."""
    first = tensors[0]
    starts, ends = [], []
    for tensor in tensors:
        start = tensor.storage_offset()
        extent = sum(
            (size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True)
        )
        starts.append(start)
        ends.append(start + extent + 1)
    span_start, span_end = min(starts), max(ends)
    span = torch.empty(0, dtype=first.dtype, device=first.device)
    span.set_(first.untyped_storage(), span_start, (span_end - span_start,), (1,))
    storage_name = _unique(f"{names[0]}@storage", taken)
    entries = [
        PlannedEntry(
            name=storage_name,
            role=Role.STORAGE,
            dtype=code_of(first.dtype),
            shape=(span_end - span_start,),
            device=str(first.device),
            source=span,
        )
    ]
    for name, tensor, start in zip(names, tensors, starts, strict=True):
        entries.append(
            PlannedEntry(
                name=name,
                role=Role.VIEW,
                dtype=code_of(tensor.dtype),
                shape=tuple(tensor.shape),
                device=str(tensor.device),
                base=storage_name,
                storage_offset=start - span_start,
                stride=tuple(tensor.stride()),
            )
        )
    return entries


def _in_name_order(entries: list[PlannedEntry], names: tuple[str, ...]) -> list[PlannedEntry]:
    """Keep leaf order (skeleton index order); storage entries go just before their views."""
    position = {name: i for i, name in enumerate(names)}
    first_view: dict[str, int] = {}
    for entry in entries:
        if entry.role == Role.VIEW and entry.base is not None:
            first_view.setdefault(entry.base, position[entry.name])

    def order(entry: PlannedEntry) -> tuple[int, int]:
        if entry.role == Role.STORAGE:
            return (first_view[entry.name], 0)
        return (position[entry.name], 1)

    return sorted(entries, key=order)
