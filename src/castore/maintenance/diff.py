"""Diff two checkpoints: which tensors were added, removed or changed, and by how much.

The plan compares manifests only: a tensor whose dtype, shape and chunk digests match
is unchanged without reading a byte. Only tensors whose digests differ are loaded, and
only their blobs; a tensor that merely shares a pack with a changed neighbour turns out
byte-identical there and counts as unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from castore._concurrency import bounded_map
from castore.blobstore.digest import Digest
from castore.maintenance.verify import decode_blob
from castore.snapshot.dtypes import element_size
from castore.snapshot.rebuild import allocate, assemble, byte_view
from castore.snapshot.refs import Role

if TYPE_CHECKING:
    from collections.abc import Hashable, Sequence

    import numpy as np

    from castore.blobstore.store import BlobStore
    from castore.manifest.records import CheckpointRecord
    from castore.snapshot.refs import TensorRef

__all__ = ["CheckpointDiff", "DiffPlan", "TensorChange", "plan_diff"]


@dataclass(frozen=True, slots=True)
class TensorChange:
    """A tensor present in both checkpoints whose bytes differ. ``max_abs_diff`` is the
    largest absolute elementwise difference (inf where only one side is NaN), or None
    when dtype or shape changed."""

    name: str
    old_dtype: str
    old_shape: tuple[int, ...]
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    max_abs_diff: float | None


@dataclass(frozen=True, slots=True)
class CheckpointDiff:
    """From checkpoint a to checkpoint b; byte counts are tensor bytes (b's for changes)."""

    a: tuple[str, int]
    b: tuple[str, int]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[TensorChange, ...]
    n_unchanged: int
    added_bytes: int
    removed_bytes: int
    changed_bytes: int


@dataclass(frozen=True, slots=True)
class DiffPlan:
    """The manifest comparison: ``suspects`` (same dtype and shape, other digests) are
    the only tensors whose data ``execute`` reads."""

    a: CheckpointRecord
    b: CheckpointRecord
    added: tuple[str, ...]
    removed: tuple[str, ...]
    reshaped: tuple[str, ...]
    suspects: tuple[str, ...]
    n_same: int

    def execute(self, blobs: BlobStore, *, workers: int) -> CheckpointDiff:
        """Load the suspects from both checkpoints and measure what changed."""
        a_refs, b_refs = _visible(self.a.tensors), _visible(self.b.tensors)
        old = _load(blobs, self.a, self.suspects, workers)
        new = _load(blobs, self.b, self.suspects, workers)
        changes = [_change(a_refs[name], b_refs[name], None) for name in self.reshaped]
        changes += [
            _change(a_refs[name], b_refs[name], _max_abs_diff(old[name], new[name]))
            for name in self.suspects
            if not _same_bytes(old[name], new[name])
        ]
        changes.sort(key=lambda change: change.name)
        return CheckpointDiff(
            a=(self.a.run, self.a.epoch),
            b=(self.b.run, self.b.epoch),
            added=self.added,
            removed=self.removed,
            changed=tuple(changes),
            n_unchanged=self.n_same + len(self.suspects) + len(self.reshaped) - len(changes),
            added_bytes=sum(_nbytes(b_refs[name]) for name in self.added),
            removed_bytes=sum(_nbytes(a_refs[name]) for name in self.removed),
            changed_bytes=sum(change.nbytes for change in changes),
        )


def plan_diff(a: CheckpointRecord, b: CheckpointRecord) -> DiffPlan:
    """Compare two checkpoints' manifests by tensor name; reads nothing."""
    a_keys, b_keys = _content_keys(a.tensors), _content_keys(b.tensors)
    a_refs, b_refs = _visible(a.tensors), _visible(b.tensors)
    both = [name for name in b_keys if name in a_keys]
    reshaped = [
        name
        for name in both
        if (a_refs[name].dtype, a_refs[name].shape) != (b_refs[name].dtype, b_refs[name].shape)
    ]
    suspects = [name for name in both if a_keys[name] != b_keys[name] and name not in reshaped]
    return DiffPlan(
        a=a,
        b=b,
        added=tuple(sorted(set(b_keys) - set(a_keys))),
        removed=tuple(sorted(set(a_keys) - set(b_keys))),
        reshaped=tuple(reshaped),
        suspects=tuple(suspects),
        n_same=len(both) - len(reshaped) - len(suspects),
    )


def _visible(tensors: Sequence[TensorRef]) -> dict[str, TensorRef]:
    return {ref.name: ref for ref in tensors if ref.role != Role.STORAGE}


def _content_keys(tensors: Sequence[TensorRef]) -> dict[str, Hashable]:
    """Per visible tensor, what determines its value: equal keys mean equal values."""
    by_name = {ref.name: ref for ref in tensors}

    def chunks(ref: TensorRef) -> tuple[tuple[str, int, int], ...]:
        return tuple((c.digest, c.offset, c.length) for c in ref.chunks)

    keys: dict[str, Hashable] = {}
    for ref in tensors:
        source = by_name.get(ref.base) if ref.base is not None else ref
        if ref.role == Role.STORAGE or source is None:
            continue
        layout = (ref.stride, ref.storage_offset) if ref.role == Role.VIEW else ()
        keys[ref.name] = (ref.dtype, ref.shape, layout, chunks(source))
    return keys


def _load(
    blobs: BlobStore, record: CheckpointRecord, names: Sequence[str], workers: int
) -> dict[str, torch.Tensor]:
    """The named tensors of ``record``, reading only the blobs they need."""
    by_name = {ref.name: ref for ref in record.tensors}
    needed = {name: by_name[name] for name in names}
    for ref in list(needed.values()):
        if ref.base is not None:
            needed[ref.base] = by_name[ref.base]
    refs = [ref for ref in record.tensors if ref.name in needed]
    lengths = {c.digest: c.blob_length for ref in refs for c in ref.chunks}
    digests = sorted(lengths)
    decoded: list[np.ndarray] = bounded_map(
        lambda digest: decode_blob(blobs, Digest(digest), lengths[digest]),
        digests,
        size_of=lambda digest: lengths[digest],
        workers=workers,
        max_in_flight_bytes=1 << 30,
    )
    by_digest = dict(zip(digests, decoded, strict=True))
    data = allocate(refs)
    for ref in refs:
        if ref.has_data:
            out, position = byte_view(data[ref.name]), 0
            for c in ref.chunks:
                piece = by_digest[c.digest][c.offset : c.offset + c.length]
                out[position : position + c.length] = piece
                position += c.length
    return assemble(refs, data)


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)
    )


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    wide = torch.complex128 if a.is_complex() else torch.float64
    x, y = a.to(wide), b.to(wide)
    same = (x == y) | (torch.isnan(x) & torch.isnan(y))
    diff = torch.where(same, 0.0, (x - y).abs()).nan_to_num(nan=math.inf)
    return float(diff.max()) if diff.numel() else 0.0


def _nbytes(ref: TensorRef) -> int:
    return ref.numel * element_size(ref.dtype)


def _change(old: TensorRef, new: TensorRef, max_abs_diff: float | None) -> TensorChange:
    return TensorChange(
        name=new.name,
        old_dtype=old.dtype,
        old_shape=old.shape,
        dtype=new.dtype,
        shape=new.shape,
        nbytes=_nbytes(new),
        max_abs_diff=max_abs_diff,
    )
