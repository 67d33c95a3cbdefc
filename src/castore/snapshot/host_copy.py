"""Bytes a save reads after ``save`` has returned, copied so that training can go on.

A save that finishes in the background reads the bytes of the entries it still has to
hash after the caller has moved on and may be changing them in place. Those bytes are
copied to host memory first, once per entry (an entry covers a whole tied storage, so
ties hold); bytes ``host_bytes`` already makes anew (from a GPU, a non-contiguous or a
lazily conjugated tensor) are not copied again. Entries the save reuses unread are not
copied at all (see ``api.tensor_blobs.plan_store``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from castore.snapshot.tensors import host_bytes, memory_bytes

if TYPE_CHECKING:
    import torch

__all__ = ["frozen_bytes"]


def frozen_bytes(tensor: torch.Tensor) -> memoryview:
    """``host_bytes(tensor)`` in memory that no later write to ``tensor`` reaches."""
    view = host_bytes(tensor)
    if memory_bytes(tensor) is None:  # host_bytes made them anew
        return view
    return memoryview(np.array(view, dtype=np.uint8, copy=True)).cast("B")
