"""Tunables as frozen option dataclasses: explicit keyword arguments, no global config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CACHE_DIR_ENV",
    "CacheOptions",
    "ChunkingOptions",
    "CodecName",
    "CodecOptions",
    "TransferOptions",
]

MiB = 1 << 20
GiB = 1 << 30
CACHE_DIR_ENV = "CASTORE_CACHE_DIR"

CodecName = Literal["auto", "raw", "zstd"]


@dataclass(frozen=True, slots=True)
class ChunkingOptions:
    """How tensor bytes are cut into blobs.

    Tensors of at least ``pack_below_bytes`` are split at fixed ``chunk_bytes`` offsets, so
    an unchanged range dedups exactly; smaller tensors are packed together into blobs of
    up to ``chunk_bytes`` so a model of hundreds of biases writes a few blobs. A pack is
    also closed where the next tensor belongs to another unit (a numbered block such as
    ``model.layers.3``, else another module) once it holds ``pack_split_bytes`` (None:
    ``pack_below_bytes``, the size from which a tensor gets blobs of its own), so the small
    tensors of a block that did not change (a fine-tune's frozen layers) dedup exactly
    instead of sharing a pack with one that trained; smaller units share packs, as every
    blob has a cost of its own on each save. ``chunk_bytes`` or more fills packs in order.
    """

    chunk_bytes: int = 4 * MiB
    pack_below_bytes: int = 1 * MiB
    pack_split_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        if not 0 <= self.pack_below_bytes <= self.chunk_bytes:
            raise ValueError(
                f"pack_below_bytes must be within [0, chunk_bytes={self.chunk_bytes}], "
                f"got {self.pack_below_bytes}"
            )
        if self.pack_split_bytes is not None and self.pack_split_bytes < 0:
            raise ValueError(f"pack_split_bytes must be non-negative, got {self.pack_split_bytes}")

    @property
    def pack_split(self) -> int:
        """``pack_split_bytes``, None resolved to ``pack_below_bytes``."""
        return self.pack_below_bytes if self.pack_split_bytes is None else self.pack_split_bytes


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """How blobs are encoded.

    ``auto`` splits multi-byte elements into byte planes and compresses each plane only
    where zstd saves at least ``min_saving`` of it (judged on samples first), because
    decoding costs time that a few percent of bytes does not repay. Each plane goes to
    ``zstd_level`` or to a near Huffman-only setting, whichever compresses its samples
    smaller: the latter often wins on float exponent planes, at 2.5x level 1's speed,
    the level where repeats pay, as in XOR deltas (see docs/format.md). Level 1 is the
    default: on float planes it compresses as well as level 3, twice as fast. ``delta``
    stores a chunk that changed since the parent checkpoint as a delta against the
    parent's same chunk, unless ``codec`` is ``raw``; ``max_chain`` bounds how many
    deltas stack before a full frame, so a load decodes at most ``max_chain + 1`` frames
    per chunk (see docs/format.md: longer chains store less, loads decode more). A save
    after the first keeps up to ``base_cache_bytes`` of the chunks it wrote in memory, so
    the next save of the run in this process finds its delta bases there instead of
    reading and decoding their chains from the store (0 turns this off); the budget is
    shared by all runs of one ``Store``, those saved longest ago giving theirs up first.
    """

    codec: CodecName = "auto"
    zstd_level: int = 1
    min_saving: float = 0.05
    delta: bool = True
    max_chain: int = 4
    base_cache_bytes: int = 512 * MiB

    def __post_init__(self) -> None:
        if self.codec not in ("auto", "raw", "zstd"):
            raise ValueError(f"codec must be 'auto', 'raw' or 'zstd', got {self.codec!r}")
        if not 0.0 <= self.min_saving < 1.0:
            raise ValueError(f"min_saving must be within [0, 1), got {self.min_saving}")
        if not isinstance(self.max_chain, int) or not 1 <= self.max_chain <= 16:
            raise ValueError(f"max_chain must be an int within [1, 16], got {self.max_chain!r}")
        if not isinstance(self.base_cache_bytes, int) or self.base_cache_bytes < 0:
            raise ValueError(
                f"base_cache_bytes must be a non-negative int, got {self.base_cache_bytes!r}"
            )


def _default_workers() -> int:
    """Threads for object stores, whose requests mostly wait on the network."""
    return max(4, min(16, 2 * (os.cpu_count() or 1)))


def local_workers() -> int:
    """Threads for local disk and memory stores, where hashing, encoding and page-cache
    copies keep the CPUs busy: one per CPU, and one more to cover a wait on the disk.
    More only share the CPUs and their caches (a 1 GiB compressed save on 2 CPUs took
    8-14% longer with 4 threads than with 2)."""
    return (os.cpu_count() or 1) + 1


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """Concurrency of hashing, encoding and transfers, with a bound on bytes in flight.

    ``castore.open`` without ``transfer`` uses ``local_workers()`` threads for local disk
    and memory stores; ``workers``' own default suits object stores.
    """

    workers: int = _default_workers()
    max_in_flight_bytes: int = 256 * MiB

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be positive, got {self.workers}")
        if self.max_in_flight_bytes < 1:
            raise ValueError(
                f"max_in_flight_bytes must be positive, got {self.max_in_flight_bytes}"
            )


def default_cache_dir() -> str:
    """``$CASTORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/castore``, else ``~/.cache/castore``."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "castore")


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """The local read-through blob cache in front of remote stores.

    ``enabled=None`` turns it on for remote stores (S3, GCS, ...) and off for local disk
    and memory, where it would only copy bytes. Blobs are immutable and named by content,
    so one cache directory serves every store and nothing in it ever needs invalidating;
    least recently used blobs are evicted beyond ``max_bytes``.

    ``remember_verified``: a local store's loads hash each blob file once per boot, then
    trust it while its identity (inode, size, times) holds, recorded under the cache
    directory (``blobstore.verified``); False hashes on every load.
    """

    enabled: bool | None = None
    directory: str | None = None
    max_bytes: int = 10 * GiB
    remember_verified: bool = True

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative, got {self.max_bytes}")
