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
from castore.api.handle import SaveHandle
from castore.api.run import Run
from castore.api.save import SaveInfo
from castore.api.store import Store
from castore.api.store import open_store as open
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

__version__ = "0.1.0"

__all__ = [
    "BlobNotFoundError",
    "CacheOptions",
    "CastoreError",
    "Checkpoint",
    "ChunkingOptions",
    "CodecOptions",
    "ConflictError",
    "FormatError",
    "IntegrityError",
    "InvalidCheckpointError",
    "NotFoundError",
    "QueryError",
    "RetryPolicy",
    "Run",
    "SaveHandle",
    "SaveInfo",
    "StorageError",
    "Store",
    "StoreUsage",
    "TransferOptions",
    "TransferStats",
    "UnsafeLoadError",
    "__version__",
    "open",
]
