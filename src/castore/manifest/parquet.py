"""Parquet bytes -> Arrow table, by the one read path that is safe next to torch.

``pq.read_table`` goes through Arrow's dataset scanner, whose background threads can
outlive the interpreter's teardown when torch is loaded: the process then aborts at exit
("terminate called without an active exception", apache/arrow#34314), seen here in about
half of the runs of a script that imports torch first and reads one part. ``ParquetFile``
with ``use_threads=False`` reads on the calling thread and never starts them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["read_parquet_bytes"]


def read_parquet_bytes(data: bytes, columns: Sequence[str] | None = None) -> pa.Table:
    """The table in ``data``; raises ``pa.ArrowException`` or ``OSError`` if unreadable."""
    reader = pq.ParquetFile(pa.BufferReader(data), pre_buffer=False)
    return reader.read(columns=list(columns) if columns is not None else None, use_threads=False)
