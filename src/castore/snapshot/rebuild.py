"""Manifest entries -> tensors: check, preallocate, then re-tie aliases and views.

Entries are checked against each other before anything is allocated, so a forged or
corrupt manifest cannot drive an allocation or a read outside an entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from castore.errors import IntegrityError
from castore.snapshot.dtypes import dtype_of, element_size
from castore.snapshot.refs import Role, TensorRef

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

__all__ = ["allocate", "assemble", "byte_view", "check_refs"]


def check_refs(refs: Sequence[TensorRef]) -> None:
    """Raise IntegrityError for entries that are inconsistent among themselves."""
    by_name = {ref.name: ref for ref in refs}
    if len(by_name) != len(refs):
        raise IntegrityError("manifest lists a tensor name twice")
    blob_lengths: dict[str, int] = {}
    for ref in refs:
        for chunk in ref.chunks:
            if blob_lengths.setdefault(chunk.digest, chunk.blob_length) != chunk.blob_length:
                raise IntegrityError(
                    "chunks of one blob disagree on its length",
                    tensor=ref.name,
                    digest=chunk.digest,
                )
    for ref in refs:
        if any(size < 0 for size in ref.shape):
            raise IntegrityError(f"negative dimension in shape {ref.shape}", tensor=ref.name)
        nbytes = ref.numel * element_size(ref.dtype)
        if ref.has_data:
            if ref.stored_length != nbytes:
                raise IntegrityError(
                    f"chunks hold {ref.stored_length} bytes, dtype and shape need {nbytes}",
                    tensor=ref.name,
                )
            for chunk in ref.chunks:
                if (
                    chunk.offset < 0
                    or chunk.length <= 0
                    or chunk.offset + chunk.length > chunk.blob_length
                ):
                    raise IntegrityError(
                        f"chunk range {chunk.offset}+{chunk.length} lies outside its blob "
                        f"of {chunk.blob_length} bytes",
                        tensor=ref.name,
                        digest=chunk.digest,
                    )
            continue
        base = by_name.get(ref.base) if ref.base is not None else None
        if ref.role == Role.ALIAS:
            if (
                base is None
                or base.role != Role.TENSOR
                or (base.dtype, base.shape) != (ref.dtype, ref.shape)
            ):
                raise IntegrityError(
                    f"alias of {ref.base!r} does not match its base", tensor=ref.name
                )
        elif ref.role == Role.VIEW:
            if base is None or base.role != Role.STORAGE or base.dtype != ref.dtype:
                raise IntegrityError(
                    f"view of {ref.base!r} has no matching storage", tensor=ref.name
                )
            if len(ref.stride) != len(ref.shape) or any(s < 0 for s in ref.stride):
                raise IntegrityError("view stride does not match its shape", tensor=ref.name)
            extent = sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
            if ref.numel and (ref.storage_offset < 0 or ref.storage_offset + extent >= base.numel):
                raise IntegrityError("view reaches outside its storage", tensor=ref.name)
        else:
            raise IntegrityError(f"unknown entry role {ref.role!r}", tensor=ref.name)


def allocate(refs: Sequence[TensorRef]) -> dict[str, torch.Tensor]:
    """Uninitialised CPU tensors for every entry that carries data."""
    return {
        ref.name: torch.empty(ref.shape, dtype=dtype_of(ref.dtype, tensor=ref.name))
        for ref in refs
        if ref.has_data
    }


def byte_view(tensor: torch.Tensor) -> np.ndarray:
    """A writable flat uint8 numpy view of a contiguous CPU tensor's memory."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def assemble(
    refs: Sequence[TensorRef],
    data: dict[str, torch.Tensor],
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Every user-visible tensor by name, on ``device``, with ties rebuilt after the move."""
    if device is not None:
        data = {name: tensor.to(device) for name, tensor in data.items()}
    tensors: dict[str, torch.Tensor] = {}
    for ref in refs:
        if ref.role == Role.TENSOR:
            tensors[ref.name] = data[ref.name]
        elif ref.role == Role.VIEW:
            storage = data[ref.base]  # type: ignore[index]
            tensors[ref.name] = storage.as_strided(ref.shape, ref.stride, ref.storage_offset)
    for ref in refs:
        if ref.role == Role.ALIAS:
            tensors[ref.name] = tensors[ref.base]  # type: ignore[index]
    return tensors
