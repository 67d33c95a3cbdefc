"""Every key in a store, built and parsed here and nowhere else.

```
castore.json                                   store config
blobs/<d[0:2]>/<d[2:4]>/<d>                    blob frames
runs/<run>/manifest/<epoch:010d>.parquet       one immutable part per commit
runs/<run>/metrics/<epoch:010d>-<us:016d>-<id>.parquet
                                               metrics attached later, one part each
gc/pending-<us:016d>-<id>.json                 garbage collection candidates of one pass
gc/rescue/<d>                                  a copy of a recorded blob a writer rewrote
<any key>.tmp-<32 hex>                         a local write in progress (or crashed)
```
"""

from __future__ import annotations

import re

from castore.blobstore.digest import Digest, is_digest
from castore.errors import InvalidCheckpointError

__all__ = [
    "BLOBS_PREFIX",
    "GC_PREFIX",
    "GC_RESCUE_PREFIX",
    "MAX_EPOCH",
    "RUNS_PREFIX",
    "STORE_CONFIG_KEY",
    "annotation_key",
    "annotation_prefix",
    "blob_key",
    "check_run_name",
    "gc_pending_key",
    "gc_rescue_key",
    "is_temporary_key",
    "manifest_prefix",
    "parse_annotation_name",
    "parse_blob_key",
    "parse_gc_pending_name",
    "parse_gc_rescue_key",
    "parse_part_name",
    "part_key",
]

STORE_CONFIG_KEY = "castore.json"
BLOBS_PREFIX = "blobs"
RUNS_PREFIX = "runs"
GC_PREFIX = "gc"
GC_RESCUE_PREFIX = f"{GC_PREFIX}/rescue"
MAX_EPOCH = 10**10 - 1

_RUN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}")
_PART_NAME_RE = re.compile(r"(\d{10})\.parquet")
_ANNOTATION_NAME_RE = re.compile(r"(\d{10})-(\d{16})-[0-9a-f]{8}\.parquet")
_GC_PENDING_NAME_RE = re.compile(r"pending-(\d{16})-[0-9a-f]{8}\.json")
_TEMPORARY_RE = re.compile(r".+\.tmp-[0-9a-f]{32}")


def check_run_name(run: object) -> str:
    """Return ``run`` if it is a safe single path segment, else raise before any write.

    Letters, digits and ``. _ = + -``, starting with a letter or digit, at most 128
    characters: no separators, no ``..``, nothing a bucket or a shell treats specially.
    """
    if not isinstance(run, str):
        raise InvalidCheckpointError(f"run name must be a str, got {type(run).__name__}")
    if not _RUN_NAME_RE.fullmatch(run) or ".." in run:
        raise InvalidCheckpointError(
            f"invalid run name {run!r}: use 1-128 letters, digits and '._=+-', "
            "starting with a letter or digit, without '..'"
        )
    return run


def blob_key(digest: str) -> str:
    if not is_digest(digest):
        raise ValueError(f"not a digest: {digest!r}")
    return f"{BLOBS_PREFIX}/{digest[0:2]}/{digest[2:4]}/{digest}"


def parse_blob_key(key: str) -> Digest | None:
    """The digest a blob key names, or None for anything that is not a well-formed blob key."""
    parts = key.strip("/").split("/")
    if len(parts) < 4 or parts[-4] != BLOBS_PREFIX:
        return None
    first, second, name = parts[-3:]
    if not is_digest(name) or name[0:2] != first or name[2:4] != second:
        return None
    return Digest(name)


def manifest_prefix(run: str) -> str:
    return f"{RUNS_PREFIX}/{check_run_name(run)}/manifest"


def part_key(run: str, epoch: int) -> str:
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch out of range: {epoch}")
    return f"{manifest_prefix(run)}/{epoch:010d}.parquet"


def parse_part_name(name: str) -> int | None:
    """The epoch a part's file name encodes, or None for foreign files."""
    match = _PART_NAME_RE.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def annotation_prefix(run: str) -> str:
    return f"{RUNS_PREFIX}/{check_run_name(run)}/metrics"


def annotation_key(run: str, epoch: int, created_us: int, unique: str) -> str:
    """A fresh key per annotation: concurrent annotators never write the same key."""
    if not 0 <= epoch <= MAX_EPOCH:
        raise ValueError(f"epoch out of range: {epoch}")
    return f"{annotation_prefix(run)}/{epoch:010d}-{created_us:016d}-{unique[:8]}.parquet"


def parse_annotation_name(name: str) -> tuple[int, int] | None:
    """(epoch, created_us) of an annotation part's file name, or None for foreign files."""
    match = _ANNOTATION_NAME_RE.fullmatch(name.rsplit("/", 1)[-1])
    return (int(match.group(1)), int(match.group(2))) if match else None


def gc_pending_key(created_us: int, unique: str) -> str:
    """A fresh key per garbage collection pass, named by when it was recorded."""
    return f"{GC_PREFIX}/pending-{created_us:016d}-{unique[:8]}.json"


def parse_gc_pending_name(name: str) -> int | None:
    """The creation time (microseconds) a pending record's name encodes, or None."""
    match = _GC_PENDING_NAME_RE.fullmatch(name.rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def gc_rescue_key(digest: str) -> str:
    """Where a writer copies a blob it rewrites while a pending record lists it."""
    if not is_digest(digest):
        raise ValueError(f"not a digest: {digest!r}")
    return f"{GC_RESCUE_PREFIX}/{digest}"


def parse_gc_rescue_key(key: str) -> Digest | None:
    """The digest a rescue copy's key names, or None for anything else."""
    folder, _, name = key.strip("/").rpartition("/")
    return Digest(name) if folder == GC_RESCUE_PREFIX and is_digest(name) else None


def is_temporary_key(key: str) -> bool:
    """Whether ``key`` is a temporary file of a local write (``<key>.tmp-<32 hex>``)."""
    return _TEMPORARY_RE.fullmatch(key.rsplit("/", 1)[-1]) is not None
