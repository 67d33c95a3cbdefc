"""castore: a content-addressed checkpoint store for PyTorch over fsspec.

```python
import castore
store = castore.open("./ckpts")
run = store.run("ppo-seed7")
run.save({"model": model.state_dict()}, epoch=10, metrics={"score": 0.82})
state = run.load(best="score")
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from castore._config import CacheOptions, ChunkingOptions, CodecOptions, TransferOptions
from castore.errors import (
    BlobNotFoundError,
    CastoreError,
    ConflictError,
    FormatError,
    IntegrityError,
    InvalidCheckpointError,
    NotFoundError,
    QueryError,
    StorageError,
    UnsafeLoadError,
)

if TYPE_CHECKING:
    from castore.api.checkpoint import Checkpoint
    from castore.api.export import ExportResult, export_checkpoint
    from castore.api.handle import SaveHandle
    from castore.api.importer import ImportItem, ImportReport, import_checkpoints
    from castore.api.load_into import IncompatibleKeys
    from castore.api.manager import CheckpointManager
    from castore.api.run import Run
    from castore.api.save import SaveInfo
    from castore.api.store import Store
    from castore.api.store import open_store as open
    from castore.api.uri import CheckpointURI, checkpoint_uri, load, parse_uri
    from castore.blobstore.retry import RetryPolicy
    from castore.blobstore.stats import TransferStats
    from castore.maintenance.accounting import StoreUsage
    from castore.maintenance.diff import CheckpointDiff
    from castore.maintenance.gc import GcReport
    from castore.maintenance.repair import RepairReport
    from castore.maintenance.retention import RetentionPlan
    from castore.maintenance.verify import VerifyReport
    from castore.snapshot.select import UnknownKeyError

# Everything that imports torch loads on first use (PEP 562), so ``castore --help`` and
# ``import castore.errors`` stay fast.
_LAZY: dict[str, tuple[str, str]] = {
    "Checkpoint": ("castore.api.checkpoint", "Checkpoint"),
    "checkpoint_uri": ("castore.api.uri", "checkpoint_uri"),
    "CheckpointDiff": ("castore.maintenance.diff", "CheckpointDiff"),
    "CheckpointManager": ("castore.api.manager", "CheckpointManager"),
    "CheckpointURI": ("castore.api.uri", "CheckpointURI"),
    "export_checkpoint": ("castore.api.export", "export_checkpoint"),
    "ExportResult": ("castore.api.export", "ExportResult"),
    "GcReport": ("castore.maintenance.gc", "GcReport"),
    "import_checkpoints": ("castore.api.importer", "import_checkpoints"),
    "ImportItem": ("castore.api.importer", "ImportItem"),
    "ImportReport": ("castore.api.importer", "ImportReport"),
    "IncompatibleKeys": ("castore.api.load_into", "IncompatibleKeys"),
    "load": ("castore.api.uri", "load"),
    "open": ("castore.api.store", "open_store"),
    "parse_uri": ("castore.api.uri", "parse_uri"),
    "RepairReport": ("castore.maintenance.repair", "RepairReport"),
    "RetentionPlan": ("castore.maintenance.retention", "RetentionPlan"),
    "RetryPolicy": ("castore.blobstore.retry", "RetryPolicy"),
    "Run": ("castore.api.run", "Run"),
    "SaveHandle": ("castore.api.handle", "SaveHandle"),
    "SaveInfo": ("castore.api.save", "SaveInfo"),
    "Store": ("castore.api.store", "Store"),
    "StoreUsage": ("castore.maintenance.accounting", "StoreUsage"),
    "TransferStats": ("castore.blobstore.stats", "TransferStats"),
    "UnknownKeyError": ("castore.snapshot.select", "UnknownKeyError"),
    "VerifyReport": ("castore.maintenance.verify", "VerifyReport"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'castore' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "BlobNotFoundError",
    "CacheOptions",
    "CastoreError",
    "Checkpoint",
    "CheckpointDiff",
    "CheckpointManager",
    "CheckpointURI",
    "ChunkingOptions",
    "CodecOptions",
    "ConflictError",
    "ExportResult",
    "FormatError",
    "GcReport",
    "ImportItem",
    "ImportReport",
    "IncompatibleKeys",
    "IntegrityError",
    "InvalidCheckpointError",
    "NotFoundError",
    "QueryError",
    "RepairReport",
    "RetentionPlan",
    "RetryPolicy",
    "Run",
    "SaveHandle",
    "SaveInfo",
    "StorageError",
    "Store",
    "StoreUsage",
    "TransferOptions",
    "TransferStats",
    "UnknownKeyError",
    "UnsafeLoadError",
    "VerifyReport",
    "__version__",
    "checkpoint_uri",
    "export_checkpoint",
    "import_checkpoints",
    "load",
    "open",
    "parse_uri",
]
