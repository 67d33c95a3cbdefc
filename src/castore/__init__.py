"""castore: a content-addressed checkpoint store for PyTorch over fsspec.

```python
import castore
store = castore.open("./ckpts")
run = store.run("ppo-seed7")
run.save({"model": model.state_dict()}, epoch=10, metrics={"score": 0.82})
state = run.load(best="score")
```
"""

from castore._config import CacheOptions, ChunkingOptions, CodecOptions, TransferOptions
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
from castore.maintenance.accounting import StoreUsage
from castore.maintenance.diff import CheckpointDiff
from castore.maintenance.gc import GcReport
from castore.maintenance.repair import RepairReport
from castore.maintenance.retention import RetentionPlan
from castore.maintenance.verify import VerifyReport
from castore.snapshot.select import UnknownKeyError

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
