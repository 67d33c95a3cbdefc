"""load_into: a checkpoint's tensors written straight into a module's parameters and buffers.

Keys: the module's ``state_dict()`` keys, each looked up in the checkpoint as
``prefix + key``. Without a prefix, the one that matches most of the module's keys is
used (``""`` for a bare state dict, ``"model."`` for ``{"model": state_dict, ...}``); two
equally good prefixes are an error that names them.

Writes: a blob that is one tensor's range is decoded into the parameter's own memory when
the parameter is a contiguous CPU tensor of the stored dtype and shape; otherwise it is
decoded into a buffer of that one tensor (pinned, for a GPU) and copied with ``copy_``,
converting the dtype as ``load_state_dict`` does. Those buffers are filled in batches of
at most ``max_in_flight_bytes``, so nothing holds a second copy of the whole model. Every
written tensor's version counter is bumped, as an in-place copy would.

Modules' ``_load_from_state_dict`` hooks do not run and non-tensor extra state is left
alone: a module that rewrites its state on load wants ``module.load_state_dict(run.load(...))``.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

import torch

from castore.errors import CastoreError, InvalidCheckpointError
from castore.snapshot.dtypes import dtype_of
from castore.snapshot.fetch import MemoryDestination, fetch_jobs, plan_jobs
from castore.snapshot.rebuild import assemble, byte_view, check_refs
from castore.snapshot.refs import Role, TensorRef
from castore.snapshot.select import visible_names

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from castore._config import TransferOptions
    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord

__all__ = ["IncompatibleKeys", "load_into_module", "resolve_prefix"]

_SHOWN = 10


class IncompatibleKeys(NamedTuple):
    """What ``load_into`` could not match, as ``load_state_dict`` reports it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def resolve_prefix(prefix: str | None, names: Sequence[str], keys: Sequence[str]) -> str:
    """``prefix`` ending in ".", or the one under which most of ``keys`` are in ``names``."""
    if prefix is not None:
        return prefix if not prefix or prefix.endswith(".") else prefix + "."
    wanted = set(keys)
    counts: Counter[str] = Counter()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts)):
            if ".".join(parts[i:]) in wanted:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        return ""
    ranked = counts.most_common()
    best = [p for p, n in ranked if n == ranked[0][1]]
    if len(best) > 1:
        raise InvalidCheckpointError(
            f"the module's keys match the checkpoint under prefixes {sorted(best)} equally "
            "well; pass prefix= to choose one"
        )
    return best[0]


def load_into_module(
    blobs: BlobStore,
    record: CheckpointRecord,
    module: torch.nn.Module,
    *,
    strict: bool,
    prefix: str | None,
    transfer: TransferOptions,
    verify: bool = True,
) -> IncompatibleKeys:
    """Write the checkpoint's tensors into ``module``; see the module docstring.

    Raises:
        InvalidCheckpointError: a shape differs (always), or keys are missing or
            unexpected and ``strict``; nothing is written then.
    """
    check_refs(record.tensors)
    targets = {
        key: value
        for key, value in module.state_dict(keep_vars=True).items()
        if isinstance(value, torch.Tensor)
    }
    names = visible_names(record.tensors)
    prefix = resolve_prefix(prefix, names, list(targets))
    by_name = {ref.name: ref for ref in record.tensors}
    mapping = {key: by_name[prefix + key] for key in targets if prefix + key in by_name}
    missing = [key for key in targets if key not in mapping]
    unexpected = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    unexpected = [key for key in unexpected if key not in targets]
    _check(mapping, targets, missing, unexpected, strict=strict, prefix=prefix)
    try:
        with torch.no_grad():
            _write(blobs, record.tensors, mapping, targets, transfer, verify)
    except CastoreError as exc:
        exc.run, exc.epoch = record.run, record.epoch
        raise
    return IncompatibleKeys(missing, unexpected)


def _check(
    mapping: Mapping[str, TensorRef],
    targets: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    *,
    strict: bool,
    prefix: str,
) -> None:
    problems = [
        f"size mismatch for {key}: the checkpoint's {prefix + key} has shape "
        f"{list(ref.shape)}, the module's has {list(targets[key].shape)}"
        for key, ref in mapping.items()
        if tuple(targets[key].shape) != ref.shape
    ]
    if strict:
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
                problems.append(f"{len(keys)} {what} key(s): {shown}")
        if missing and not mapping:
            problems.append(f"no key matched under prefix {prefix!r}; pass prefix=")
    if problems:
        raise InvalidCheckpointError("cannot load into the module: " + "; ".join(problems))


def _write(
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    mapping: Mapping[str, TensorRef],
    targets: Mapping[str, torch.Tensor],
    transfer: TransferOptions,
    verify: bool,
) -> None:
    """Decode into targets directly where possible, through bounded buffers elsewhere."""
    by_name = {ref.name: ref for ref in refs}
    users: dict[str, list[str]] = {}
    for key, ref in mapping.items():
        source = by_name[ref.base] if ref.role == Role.ALIAS and ref.base else ref
        users.setdefault(source.name, []).append(key)

    direct: dict[str, str] = {}
    claimed: set[int] = set()
    for name, keys in users.items():
        for key in keys:
            target = targets[key]
            if _writable(target, by_name[name]) and target.data_ptr() not in claimed:
                direct[name] = key
                claimed.add(target.data_ptr())
                break

    batches: list[list[str]] = [[]]
    used = 0
    for name in users:
        size = 0 if name in direct else _nbytes(by_name, name)
        if batches[-1] and used + size > transfer.max_in_flight_bytes:
            batches.append([])
            used = 0
        batches[-1].append(name)
        used += size
    for batch in batches:
        if batch:
            _write_batch(blobs, refs, batch, users, direct, targets, transfer, verify)


def _write_batch(
    blobs: BlobStore,
    refs: Sequence[TensorRef],
    batch: Sequence[str],
    users: Mapping[str, list[str]],
    direct: Mapping[str, str],
    targets: Mapping[str, torch.Tensor],
    transfer: TransferOptions,
    verify: bool,
) -> None:
    by_name = {ref.name: ref for ref in refs}
    wanted = set(batch) | {by_name[n].base for n in batch if by_name[n].role == Role.VIEW}
    data_refs = [ref for ref in refs if ref.name in wanted and ref.has_data]
    pinned = any(targets[k].device.type == "cuda" for n in batch for k in users[n])
    data: dict[str, torch.Tensor] = {}
    for ref in data_refs:
        if ref.name in direct:
            data[ref.name] = targets[direct[ref.name]].detach()
        else:
            dtype = dtype_of(ref.dtype, tensor=ref.name)
            data[ref.name] = torch.empty(ref.shape, dtype=dtype, pin_memory=pinned)
    destination = MemoryDestination({n: byte_view(t) for n, t in data.items()})
    fetch_jobs(blobs, plan_jobs(data_refs), destination, transfer=transfer, verify=verify)
    tensors = assemble([by_name[n] for n in wanted if n in by_name], data)
    for name in batch:
        for key in users[name]:
            target = targets[key]
            if direct.get(name) == key:
                target.detach().view(-1)[:0].zero_()  # bump the version counter
            else:
                target.copy_(tensors[name], non_blocking=pinned)
    if pinned:
        torch.cuda.synchronize()


def _writable(target: torch.Tensor, ref: TensorRef) -> bool:
    return (
        ref.role == Role.TENSOR
        and target.device.type == "cpu"
        and target.dtype == dtype_of(ref.dtype, tensor=ref.name)
        and tuple(target.shape) == ref.shape
        and target.is_contiguous()
        and not (target.is_conj() or target.is_neg())
    )


def _nbytes(by_name: Mapping[str, TensorRef], name: str) -> int:
    """Bytes of the buffer an entry is decoded into: its own, or its view's storage."""
    ref = by_name[name]
    if ref.role == Role.VIEW and ref.base is not None:
        ref = by_name[ref.base]
    return ref.stored_length
