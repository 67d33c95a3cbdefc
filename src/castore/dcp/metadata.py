"""DCP's global ``Metadata`` as a tree of plain values inside the committed checkpoint.

A DCP checkpoint in castore is an ordinary checkpoint whose tree is

```
{"dcp": {...metadata, plain values only...}, "items": {<item key>: tensor, ...}}
```

so ``run.load()``, ``castore show`` and queries read it like any other, and no pickled
metadata file exists. Each saved item (a whole tensor, one shard of a tensor, or a
non-tensor value DCP serialised to bytes, stored as uint8) is one tensor of the tree; its
key is the fully qualified name, plus the shard's region in the global tensor when it
covers only part of it: ``layers.0.weight[0:512,0:1024]``. The ``dcp`` node:

```
format_version  1
version         DCP's Metadata.version (a string or None)
state_dict      {fqn: {"type": "bytes"}
                      | {"type": "tensor", "dtype": "f32", "size": [...],
                         "requires_grad": bool, "memory_format": "contiguous_format",
                         "pin_memory": bool,
                         "chunks": [{"offsets": [...], "sizes": [...]}, ...]}}
planner_data    the planner's data as saved (the default planner's key paths)
storage_meta    None | {"checkpoint_id", "save_id", "load_id", "modules"}
storage         [{"fqn": str, "offset": [...] | None, "entry": <tensor name>}, ...]
```

``storage`` maps DCP's ``MetadataIndex`` of each item to the name of the tensor entry
holding its bytes (``items.<item key>``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import WriteItemType

from castore.errors import (
    FormatError,
    InvalidCheckpointError,
    UnsafeLoadError,
    check_format_version,
)
from castore.snapshot.dtypes import code_of, dtype_of
from castore.snapshot.tree import flatten_tree, unflatten_tree

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch.distributed.checkpoint.planner import WriteItem

    from castore.manifest.records import CheckpointRecord

__all__ = [
    "DCP_FORMAT_VERSION",
    "DCP_KEY",
    "ITEMS_KEY",
    "check_plain",
    "entry_name",
    "metadata_from_tree",
    "metadata_to_tree",
    "read_tree",
]

DCP_FORMAT_VERSION = 1
DCP_KEY = "dcp"
ITEMS_KEY = "items"

_MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format,
}
_FORMAT_NAMES = {fmt: name for name, fmt in _MEMORY_FORMATS.items()}
_PLACEHOLDER = torch.empty(0)


def entry_name(item: WriteItem) -> str:
    """The tensor name an item is stored under: ``items.<fqn>``, plus ``[a:b,...]`` for a
    shard that is only part of its tensor."""
    name = f"{ITEMS_KEY}.{item.index.fqn}"
    data = item.tensor_data
    if item.type == WriteItemType.BYTE_IO or data is None:
        return name
    offsets, sizes = data.chunk.offsets, data.chunk.sizes
    if all(o == 0 for o in offsets) and tuple(sizes) == tuple(data.size):
        return name
    region = ",".join(f"{o}:{o + s}" for o, s in zip(offsets, sizes, strict=True))
    return f"{name}[{region}]"


def check_plain(value: object, what: str) -> None:
    """Refuse planner data that is not plain values in containers, before any write."""
    try:
        flat = flatten_tree(value)
    except InvalidCheckpointError as exc:
        exc.add_note(f"while storing DCP {what} as JSON; castore.dcp never pickles")
        raise
    if flat.tensors:
        raise InvalidCheckpointError(
            f"DCP {what} holds tensors ('{flat.names[0]}'); castore.dcp stores plain values only"
        )


def metadata_to_tree(metadata: Metadata, entries: Mapping[MetadataIndex, str]) -> dict[str, Any]:
    """The ``dcp`` node for ``metadata``, whose items are stored under ``entries``."""
    check_plain(metadata.planner_data, "planner data")
    state: dict[str, Any] = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if isinstance(meta, BytesStorageMetadata):
            state[fqn] = {"type": "bytes"}
            continue
        props = meta.properties
        state[fqn] = {
            "type": "tensor",
            "dtype": code_of(props.dtype, tensor=fqn),
            "size": list(meta.size),
            "requires_grad": bool(props.requires_grad),
            "memory_format": _FORMAT_NAMES.get(props.memory_format, "contiguous_format"),
            "pin_memory": bool(props.pin_memory),
            "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in meta.chunks],
        }
    return {
        "format_version": DCP_FORMAT_VERSION,
        "version": metadata.version,
        "state_dict": state,
        "planner_data": metadata.planner_data,
        "storage_meta": _storage_meta_to_tree(metadata.storage_meta),
        "storage": [
            {
                "fqn": index.fqn,
                "offset": None if index.offset is None else list(index.offset),
                "entry": name,
            }
            for index, name in entries.items()
        ],
    }


def metadata_from_tree(node: object) -> Metadata:
    """Rebuild DCP's ``Metadata``; ``storage_data`` maps each item to its entry name.

    Raises:
        FormatError: the node is malformed or written by a newer castore.
    """
    if not isinstance(node, dict):
        raise FormatError("the checkpoint's 'dcp' node is not a mapping")
    check_format_version(node.get("format_version"), DCP_FORMAT_VERSION, "DCP metadata")
    try:
        state: dict[str, TensorStorageMetadata | BytesStorageMetadata] = {
            fqn: _storage_type(fqn, meta) for fqn, meta in node["state_dict"].items()
        }
        storage = {
            MetadataIndex(row["fqn"], row["offset"]): row["entry"] for row in node["storage"]
        }
        return Metadata(
            state_dict_metadata=state,
            planner_data=node["planner_data"],
            storage_data=storage,
            storage_meta=_storage_meta_from_tree(node["storage_meta"]),
            version=node["version"],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(
            f"the checkpoint's DCP metadata is malformed: {type(exc).__name__}: {exc}"
        ) from exc


def read_tree(record: CheckpointRecord) -> dict[str, Any]:
    """The checkpoint's ``dcp`` node, from its skeleton alone (no tensor is fetched).

    Raises:
        FormatError: the checkpoint was not saved through ``castore.dcp``.
    """
    try:
        tree = unflatten_tree(record.skeleton, [_PLACEHOLDER] * len(record.tensors))
    except UnsafeLoadError:
        tree = None
    if not isinstance(tree, dict) or not isinstance(tree.get(DCP_KEY), dict):
        raise FormatError(
            "this checkpoint was not saved through castore.dcp (it has no DCP metadata); "
            "load it with run.load() instead",
            run=record.run,
            epoch=record.epoch,
        )
    return tree[DCP_KEY]


def _storage_type(fqn: str, meta: dict[str, Any]) -> TensorStorageMetadata | BytesStorageMetadata:
    if meta["type"] == "bytes":
        return BytesStorageMetadata()
    if meta["type"] != "tensor":
        raise FormatError(f"unknown DCP item type {meta['type']!r} of {fqn!r}")
    properties = TensorProperties(
        dtype=dtype_of(meta["dtype"], tensor=fqn),
        requires_grad=meta["requires_grad"],
        memory_format=_MEMORY_FORMATS[meta["memory_format"]],
        pin_memory=meta["pin_memory"],
    )
    return TensorStorageMetadata(
        properties=properties,
        size=torch.Size(meta["size"]),
        chunks=[
            ChunkStorageMetadata(torch.Size(c["offsets"]), torch.Size(c["sizes"]))
            for c in meta["chunks"]
        ],
    )


def _storage_meta_to_tree(meta: StorageMeta | None) -> dict[str, Any] | None:
    if meta is None:
        return None
    checkpoint_id = meta.checkpoint_id
    return {
        "checkpoint_id": None if checkpoint_id is None else os.fspath(checkpoint_id),
        "save_id": meta.save_id,
        "load_id": meta.load_id,
        "modules": list(meta.modules),
    }


def _storage_meta_from_tree(node: dict[str, Any] | None) -> StorageMeta | None:
    if node is None:
        return None
    return StorageMeta(
        checkpoint_id=node["checkpoint_id"],
        save_id=node["save_id"],
        load_id=node["load_id"],
        modules=list(node["modules"]),
    )
