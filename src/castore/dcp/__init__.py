"""castore as a storage backend for ``torch.distributed.checkpoint`` (DCP).

DCP plans and reshards sharded state (FSDP, DTensor, per-rank state dicts); castore
stores it: every rank's chunks deduplicated and delta-encoded in one content-addressed
store, one manifest part per checkpoint holding DCP's metadata as plain values.

```python
import torch.distributed.checkpoint as dcp
from castore.dcp import StorageReader, StorageWriter

dcp.save(state, storage_writer=StorageWriter("s3://bucket/ckpts", "llm", epoch=3))
dcp.load(state, storage_reader=StorageReader("s3://bucket/ckpts", "llm"))
```
"""

from castore.dcp.reader import StorageReader
from castore.dcp.writer import StorageWriter

__all__ = ["StorageReader", "StorageWriter"]
