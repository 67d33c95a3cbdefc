"""Store: the root of a castore on any fsspec filesystem."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fsspec.implementations.memory import MemoryFileSystem

from castore._config import (
    CacheOptions,
    ChunkingOptions,
    CodecOptions,
    TransferOptions,
    default_cache_dir,
    local_workers,
)
from castore.api.run import Run
from castore.api.tensor_blobs import SaveOptions
from castore.api.validate import check_number
from castore.blobstore.cache import LocalBlobCache
from castore.blobstore.decoded import DecodedBlobs
from castore.blobstore.layout import STORE_CONFIG_KEY, check_run_name
from castore.blobstore.location import Location, open_location
from castore.blobstore.store import BlobStore, CachedBlobStore
from castore.blobstore.verified import VerifiedFiles
from castore.errors import (
    CastoreError,
    ConflictError,
    FormatError,
    IntegrityError,
    NotFoundError,
    check_format_version,
)
from castore.maintenance.accounting import StoreUsage, measure_usage
from castore.maintenance.diff import CheckpointDiff, plan_diff
from castore.maintenance.gc import GcReport, plan_gc
from castore.maintenance.repair import RepairReport, repair_blobs
from castore.maintenance.verify import VerifyReport, plan_verify
from castore.manifest.query import concat_summaries, run_query
from castore.manifest.reader import list_runs

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd

    from castore.blobstore.retry import RetryPolicy
    from castore.blobstore.stats import TransferStats

__all__ = ["STORE_FORMAT_VERSION", "Store", "open_store"]

STORE_FORMAT_VERSION = 1
HASH_NAME = "blake3-256"


class Store:
    """A castore at one URL: runs, queries across them, and storage accounting.

    Create one with ``castore.open(url)``.
    """

    def __init__(self, location: Location, blobs: BlobStore, options: SaveOptions) -> None:
        self.location = location
        self.blobs = blobs
        self.options = options
        self._runs: dict[str, Run] = {}
        self._saved: list[str] = []  # runs by their last save here, oldest first
        self._bases_lock = threading.Lock()
        self._followers = 0

    @property
    def url(self) -> str:
        return self.location.url

    def __repr__(self) -> str:
        return f"castore.Store({self.url!r})"

    def _trim_delta_bases(self, saved: str) -> None:
        """Hold the delta bases runs keep in memory (``CodecOptions.base_cache_bytes``) to
        one budget for the whole store, dropping those of the runs saved longest ago: a
        process that saves many runs keeps that much, not that much per run."""
        with self._bases_lock:
            self._saved = [name for name in self._saved if name != saved] + [saved]
            room = self.options.codec.base_cache_bytes
            for name in reversed(self._saved):
                held = self._runs[name]._bases_held()
                if held > room:
                    self._runs[name]._drop_bases()
                else:
                    room -= held

    @contextmanager
    def _following(self) -> Iterator[None]:
        """While a run is followed, loads keep the blobs they decode (up to
        ``CodecOptions.base_cache_bytes``) as the next epoch's delta bases; the memory goes
        when the last follower stops (see ``blobstore.decoded``)."""
        with self._bases_lock:
            self._followers += 1
            if self.blobs.decoded is None:
                self.blobs.decoded = DecodedBlobs(self.options.codec.base_cache_bytes)
        try:
            yield
        finally:
            with self._bases_lock:
                self._followers -= 1
                if not self._followers:
                    self.blobs.decoded = None

    def close(self) -> None:
        """Wait for every run's asynchronous save; raise the first error among them."""
        errors = []
        for run in self._runs.values():
            try:
                run.wait()
            except CastoreError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def transfer_stats(self) -> TransferStats:
        """Blobs and bytes uploaded, downloaded and served from the local cache so far;
        subtract two snapshots to see what one call moved."""
        return self.blobs.stats()

    def run(self, name: str) -> Run:
        """The run called ``name``; it exists once its first checkpoint is saved."""
        check_run_name(name)
        if name not in self._runs:
            self._runs[name] = Run(self, name)
        return self._runs[name]

    def runs(self) -> list[str]:
        """Names of runs with at least one checkpoint, sorted."""
        return list_runs(self.location)

    def query(self, sql: str) -> pd.DataFrame:
        """Run DuckDB SQL over the view ``checkpoints``: one row per checkpoint of every run.

        Columns: run, epoch, step, created_at, parent_epoch, n_tensors, logical_bytes,
        new_bytes, stored_bytes, new_blobs, format_version, and one per metric.
        """
        tables = [self.run(name).summary_table() for name in self.runs()]
        return run_query(sql, {"checkpoints": concat_summaries(tables)})

    def du(self) -> StoreUsage:
        """Logical bytes of every checkpoint against the bytes the blobs take."""
        logical: list[int] = []
        runs = self.runs()
        for name in runs:
            table = self.run(name).summary_table()
            logical.extend(table.column("logical_bytes").to_pylist())
        return measure_usage(self.blobs, runs=len(runs), logical_bytes=logical)

    def gc(
        self, *, grace_s: float = 3600.0, dry_run: bool = False, now: float | None = None
    ) -> GcReport:
        """One garbage collection pass: delete the candidates an earlier pass recorded at
        least ``grace_s`` seconds ago that no checkpoint references now, then record the
        unreferenced blobs older than ``grace_s`` for a later pass. Safe while others
        save, load and annotate, provided no save runs longer than ``grace_s``
        (docs/operations.md). ``dry_run`` only reports; ``now`` stands in for the clock.

        Raises:
            IntegrityError: a manifest part or gc record is unreadable; nothing deleted.
        """
        grace_s = check_number("grace_s", grace_s)
        workers = self.options.transfer.workers
        plan = plan_gc(self._uncached_blobs(), grace_s=grace_s, workers=workers, now=now)
        if dry_run:
            return plan.preview()
        return plan.execute(self.location, workers=workers, now=now)

    def verify(self, run: str | None = None) -> VerifyReport:
        """Read back every blob that the checkpoints of ``run`` (default: every run) need,
        from the store itself (never the local cache), decode and hash it; the report
        names each missing or corrupt blob with the checkpoints and tensors it breaks.

        Raises:
            NotFoundError: ``run`` has no checkpoints.
        """
        if run is not None:
            check_run_name(run)
        transfer = self.options.transfer
        plan = plan_verify(self.location, run=run, workers=transfer.workers)
        return plan.execute(
            self._uncached_blobs(),
            workers=transfer.workers,
            max_in_flight_bytes=transfer.max_in_flight_bytes,
        )

    def repair(self, report: VerifyReport, source: str, **storage_options: object) -> RepairReport:
        """Restore the blobs ``report`` found missing or corrupt from ``source``: a replica
        store's URL or a blob cache directory. Each is verified before it is written
        back and checked again after."""
        location = open_location(source, storage_options, self.location.retry)
        return repair_blobs(
            report.problems,
            target=self._uncached_blobs(),
            source=BlobStore(location, self.options.transfer),
            workers=self.options.transfer.workers,
        )

    def diff(self, run_a: str, epoch_a: int, run_b: str, epoch_b: int) -> CheckpointDiff:
        """Tensors added, removed and changed from one checkpoint to another, with the
        largest absolute difference of each changed one; unchanged tensors (equal chunk
        digests) are not read.

        Raises:
            NotFoundError: either checkpoint does not exist.
        """
        a = self.run(run_a).record(epoch_a)
        b = self.run(run_b).record(epoch_b)
        return plan_diff(a, b).execute(self.blobs, workers=self.options.transfer.workers)

    def _uncached_blobs(self) -> BlobStore:
        """The store's own blobs, bypassing any local cache: maintenance judges the store."""
        return BlobStore(self.location, self.options.transfer)


def open_store(
    url: str,
    *,
    create: bool = True,
    chunking: ChunkingOptions | None = None,
    codec: CodecOptions | None = None,
    transfer: TransferOptions | None = None,
    cache: CacheOptions | None = None,
    retry: RetryPolicy | None = None,
    progress: bool | None = None,
    reuse_unchanged: bool = True,
    **storage_options: object,
) -> Store:
    """Open the store at ``url`` (a path or any fsspec URL), creating it if ``create``.

    Storage options (``endpoint_url``, ``key``, ``token``, ``anon``...) go to fsspec as
    they are. ``cache`` configures the local read-through blob cache (on by default for
    remote stores), ``retry`` the backoff on transient backend failures. ``progress``
    shows progress bars on long transfers: None means only when stderr is a terminal.
    ``reuse_unchanged`` lets a save skip reading and hashing tensors whose torch version
    counter shows no in-place change since this process last saved them; turn it off if
    your code writes weights through ``tensor.data``.

    Raises:
        NotFoundError: no store at ``url`` and ``create`` is false.
        FormatError: the store was written by a newer castore.
    """
    location = open_location(url, storage_options, retry)
    _open_or_create_config(location, create=create)
    options = SaveOptions(
        chunking=chunking or ChunkingOptions(),
        codec=codec or CodecOptions(),
        transfer=transfer or _default_transfer(location),
        progress=progress,
        reuse_unchanged=reuse_unchanged,
    )
    return Store(
        location, _blob_store(location, options.transfer, cache or CacheOptions()), options
    )


def _is_remote(location: Location) -> bool:
    return not (location.is_local or isinstance(location.fs, MemoryFileSystem))


def _default_transfer(location: Location) -> TransferOptions:
    """Threads by what bounds the work: the CPUs here, the network for object stores."""
    return TransferOptions() if _is_remote(location) else TransferOptions(local_workers())


def _blob_store(location: Location, transfer: TransferOptions, cache: CacheOptions) -> BlobStore:
    """A plain BlobStore for local disk and memory, a cached one in front of remote stores."""
    remote = _is_remote(location)
    directory = cache.directory or default_cache_dir()
    if cache.enabled is False or (cache.enabled is None and not remote):
        trusted = cache.remember_verified and location.is_local
        return BlobStore(
            location, transfer, VerifiedFiles.this_boot(directory) if trusted else None
        )
    return CachedBlobStore(location, LocalBlobCache(directory, cache.max_bytes), transfer)


def _open_or_create_config(location: Location, *, create: bool) -> dict[str, object]:
    try:
        return _check_config(location, location.read(STORE_CONFIG_KEY))
    except NotFoundError:
        if not create:
            raise NotFoundError(
                "no castore store here (no castore.json); saving a checkpoint creates one",
                url=location.url,
            ) from None
    config: dict[str, object] = {
        "format": "castore",
        "format_version": STORE_FORMAT_VERSION,
        "hash": HASH_NAME,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        location.write_exclusive(STORE_CONFIG_KEY, json.dumps(config, indent=2).encode())
    except ConflictError:
        return _check_config(location, location.read(STORE_CONFIG_KEY))
    except NotFoundError as exc:
        raise NotFoundError(
            f"cannot create {STORE_CONFIG_KEY}: the bucket or parent folder does not exist",
            url=location.url,
        ) from exc
    return config


def _check_config(location: Location, raw: bytes) -> dict[str, object]:
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IntegrityError(
            f"{STORE_CONFIG_KEY} is not valid JSON: {exc}", url=location.url
        ) from exc
    if not isinstance(config, dict) or config.get("format") != "castore":
        raise FormatError(f"{STORE_CONFIG_KEY} does not describe a castore store", url=location.url)
    check_format_version(
        config.get("format_version"), STORE_FORMAT_VERSION, "store", url=location.url
    )
    if config.get("hash") != HASH_NAME:
        raise FormatError(
            f"store hashes with {config.get('hash')!r}, castore uses {HASH_NAME}", url=location.url
        )
    return config
