"""Parquet manifest parts: schema, records, writing, reading, queries. No torch here."""

from castore.manifest.reader import list_epochs, list_runs, read_part, read_summary
from castore.manifest.records import CheckpointRecord
from castore.manifest.schema import FORMAT_VERSION, check_metric_name
from castore.manifest.writer import write_part

__all__ = [
    "FORMAT_VERSION",
    "CheckpointRecord",
    "check_metric_name",
    "list_epochs",
    "list_runs",
    "read_part",
    "read_summary",
    "write_part",
]
