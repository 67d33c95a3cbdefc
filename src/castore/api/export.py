"""Export one checkpoint to a plain file someone without castore can read.

``.pt``: the tree as ``torch.save`` writes it, containers and tensors only, so
``torch.load(weights_only=True)`` reads it; an object saved whole comes out as the state
dict of its tensors (nothing is unpickled). ``.safetensors``: the tensors by their
checkpoint names, tied ones as separate copies (the format has no ties). Beside either, a
``.json`` sidecar with the run, epoch, step, metrics and saved metadata. Files appear
complete or not at all (written aside, then renamed).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from castore.api.metadata import saved_metadata
from castore.api.uri import checkpoint_uri
from castore.errors import InvalidCheckpointError
from castore.snapshot.tree import flatten_tree

if TYPE_CHECKING:
    from collections.abc import Callable

    from castore.api.load import Keys
    from castore.api.run import Run

__all__ = ["ExportResult", "export_checkpoint"]

FORMATS = (".pt", ".safetensors")


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: str
    sidecar: str
    tensors: int
    nbytes: int


def export_checkpoint(
    run: Run,
    epoch: int | None,
    out: str | os.PathLike[str],
    *,
    keys: Keys = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write checkpoint ``epoch`` (the latest when None) of ``run`` to ``out``, a
    ``.pt`` or ``.safetensors`` path, with ``keys`` selecting tensors as in ``Run.load``.

    Raises:
        InvalidCheckpointError: an unknown extension, a directory that does not exist,
            or ``out`` exists and not ``overwrite``; nothing was written.
        NotFoundError: no such checkpoint, or a key pattern that matches nothing.
    """
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise InvalidCheckpointError(
            f"cannot export to {str(path)!r}: the name must end in .pt or .safetensors"
        )
    if not path.parent.is_dir():
        raise InvalidCheckpointError(
            f"cannot export to {str(path)!r}: directory {str(path.parent)!r} does not exist"
        )
    sidecar = path.with_suffix(".json")
    for target in (path, sidecar):
        if target.exists() and not overwrite:
            raise InvalidCheckpointError(
                f"{str(target)!r} exists; overwrite=True (castore export --force) replaces it"
            )
    checkpoint = run.open(epoch)
    tree = checkpoint.load(keys=keys if keys is not None else "*")
    flat = flatten_tree(tree)
    if path.suffix.lower() == ".pt":
        _write_atomically(path, lambda tmp: torch.save(tree, tmp))
    else:
        _write_safetensors(path, flat.names, flat.tensors, checkpoint.epoch, run)
    record = checkpoint.record
    description = {
        "uri": checkpoint_uri(run.store, run.name, checkpoint.epoch),
        "run": run.name,
        "epoch": checkpoint.epoch,
        "step": record.step,
        "created_at": record.created_at.isoformat(),
        "metrics": checkpoint.metrics,
        "metadata": saved_metadata(record.skeleton),
        "keys": keys,
        "tensors": len(flat.names),
    }
    text = json.dumps(description, indent=2, default=str)
    _write_atomically(sidecar, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    nbytes = sum(t.numel() * t.element_size() for t in flat.tensors)
    return ExportResult(str(path), str(sidecar), len(flat.names), nbytes)


def _write_safetensors(
    path: Path, names: tuple[str, ...], tensors: tuple[torch.Tensor, ...], epoch: int, run: Run
) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError as exc:
        raise InvalidCheckpointError(
            "exporting .safetensors needs the safetensors package (pip install castore[migrate])"
        ) from exc
    seen: set[int] = set()
    flat: dict[str, torch.Tensor] = {}
    for name, tensor in zip(names, tensors, strict=True):
        storage = tensor.untyped_storage().data_ptr()
        shared = storage in seen and tensor.numel() > 0
        seen.add(storage)
        if shared or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        flat[name] = tensor
    header = {"castore.run": run.name, "castore.epoch": str(epoch)}
    _write_atomically(path, lambda tmp: save_file(flat, tmp, metadata=header))


def _write_atomically(path: Path, write: Callable[[str], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
