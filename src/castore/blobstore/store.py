"""BlobStore: frames by digest on a Location. Knows nothing of tensors or codecs.

Blobs are immutable and content-addressed, so a put that finds the key already there
(or races another writer of the same digest) is harmless: both wrote the same bytes.
``CachedBlobStore`` wraps one with a local read-through cache for remote stores.

Blobs that garbage collection has recorded as candidates (``gc/pending-*.json``) count
as absent in ``has_many``: a save then writes them again rather than rely on a blob the
next gc pass may delete, and gc keeps a candidate whose modification time has changed.
Such a rewrite is preceded by a copy under ``gc/rescue/``, from which a pass that
deleted the blob between its check and the rewrite puts it back (``maintenance.gc``).
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING

from castore._concurrency import bounded_map
from castore._config import TransferOptions
from castore.blobstore.digest import Digest, short
from castore.blobstore.layout import (
    BLOBS_PREFIX,
    GC_PREFIX,
    blob_key,
    gc_rescue_key,
    parse_blob_key,
    parse_gc_pending_name,
)
from castore.blobstore.reader import BlobReader, BufferReader
from castore.blobstore.stats import TransferCounter, TransferStats
from castore.errors import BlobNotFoundError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import numpy as np

    Buffer = bytes | memoryview | np.ndarray

    from castore.blobstore.cache import LocalBlobCache
    from castore.blobstore.decoded import DecodedBlobs
    from castore.blobstore.location import FileStat, Location
    from castore.blobstore.verified import VerifiedFiles

__all__ = ["BlobStore", "CachedBlobStore"]


class BlobStore:
    """put/get/has/list/delete of blob frames under ``<store>/blobs/``, with counts."""

    def __init__(
        self,
        location: Location,
        transfer: TransferOptions | None = None,
        verified: VerifiedFiles | None = None,
    ) -> None:
        self.location = location
        self.transfer = transfer or TransferOptions()
        self.verified = verified
        # Set while a run of the store is followed: its loads' decoded blobs (see
        # blobstore.decoded), the next epoch's delta bases.
        self.decoded: DecodedBlobs | None = None
        self.counter = TransferCounter()
        self._pending: dict[str, frozenset[Digest]] = {}
        self._recorded_digests: frozenset[Digest] | None = None  # their union, None: not read
        self._pending_lock = threading.Lock()

    def stats(self) -> TransferStats:
        return self.counter.snapshot()

    def put(self, digest: Digest, parts: Sequence[Buffer]) -> None:
        """Write a frame given as buffers in order (never joined on local disk).

        A blob that a pending record lists (as of this store's last look, see
        ``pending_deletions``) is first copied to ``gc/rescue/``: the pass sweeping that
        record may check the blob just before this write and delete it just after.
        """
        if digest in self._recorded():
            self.location.write(gc_rescue_key(digest), parts)
        self.location.write(blob_key(digest), parts)
        self.counter.add("uploaded", sum(memoryview(part).nbytes for part in parts))

    def get(self, digest: Digest) -> bytes | memoryview:
        """The frame; memory-mapped, not copied, on local disk."""
        try:
            frame = self.location.read_view(blob_key(digest))
        except NotFoundError as exc:
            raise _missing(digest, self.location.url) from exc
        self.counter.add("downloaded", len(frame))
        return frame

    def reader(self, digest: Digest) -> BlobReader:
        """The frame opened for a load to read in place (see ``blobstore.reader``); close it.

        A local file is read by range; anything else comes through ``get``, whole.
        """
        if not self.location.is_local:
            return BufferReader(self.get(digest))
        try:
            reader = self.location.open_reader(blob_key(digest))
        except NotFoundError as exc:
            raise _missing(digest, self.location.url) from exc
        self.counter.add("downloaded", reader.size)
        return reader

    def trusts(self, digest: Digest, blob: BlobReader) -> bool:
        """True when ``blob`` is a file this machine hashed to ``digest`` since it booted,
        unchanged since (see ``blobstore.verified``)."""
        identity = blob.identity
        return (
            self.verified is not None
            and identity is not None
            and self.verified.trusts(digest, identity)
        )

    def note_verified(self, digest: Digest, blob: BlobReader) -> None:
        """Record that ``blob``, which decodes without a delta base, hashed to ``digest``."""
        if self.verified is not None and blob.identity is not None:
            self.verified.record(digest, blob.identity)

    def get_head(self, digest: Digest, size: int) -> bytes:
        """The first ``size`` bytes of a frame: enough to read its header."""
        try:
            return self.location.read_range(blob_key(digest), 0, size)
        except NotFoundError as exc:
            raise BlobNotFoundError(
                f"blob {short(digest)} is missing from the store", digest=digest
            ) from exc

    def discard_cached(self, digest: Digest) -> bool:
        """Forget a locally cached copy found corrupt; True if there was one to forget."""
        del digest
        return False

    def has_many(self, digests: Iterable[Digest]) -> set[Digest]:
        """The subset of ``digests`` present in the store and not recorded by garbage
        collection as candidates for deletion (see the module docstring).

        Local disk answers a stat per digest. Object stores are asked with one concurrent
        LIST per blob folder instead: s3fs answers a missing key's ``exists`` with a HEAD
        and then a listing, three requests where one LIST serves every digest it holds.
        """
        unique = sorted(set(digests))
        if not unique:
            return set()
        pending = self.pending_deletions()
        if self.location.is_local:
            return {d for d in unique if d not in pending and self.location.exists(blob_key(d))}
        folders = sorted({blob_key(d).rsplit("/", 1)[0] for d in unique})
        listed = bounded_map(
            self.location.list_names,
            folders,
            size_of=lambda _: 0,
            workers=self.transfer.workers,
            max_in_flight_bytes=1,
        )
        names = {name for names in listed for name in names}
        return {d for d in unique if d in names and d not in pending}

    def pending_deletions(self) -> frozenset[Digest]:
        """Digests recorded as garbage collection candidates by some pending record.

        Records are immutable, so each is read once per BlobStore; one listing of
        ``gc/`` per call finds new ones and forgets swept ones.
        """
        names = [n for n in self.location.list_names(GC_PREFIX) if parse_gc_pending_name(n)]
        with self._pending_lock:
            known = {n: d for n, d in self._pending.items() if n in names}
        for name in names:
            if name not in known:
                try:
                    data = self.location.read(f"{GC_PREFIX}/{name}")
                except NotFoundError:  # swept by a gc pass since the listing
                    continue
                known[name] = _pending_digests(data)
        recorded = frozenset().union(*known.values())
        with self._pending_lock:
            self._pending, self._recorded_digests = known, recorded
        return recorded

    def _recorded(self) -> frozenset[Digest]:
        """The digests pending records listed at the last look; the first call looks."""
        with self._pending_lock:
            recorded = self._recorded_digests
        return self.pending_deletions() if recorded is None else recorded

    def sizes(self) -> dict[Digest, int]:
        """Every blob in the store with its stored (frame) size; foreign files are ignored."""
        return {digest: stat.size for digest, stat in self.listing().items()}

    def listing(self) -> dict[Digest, FileStat]:
        """Every blob with its stored size and modification time; foreign files ignored."""
        found = self.location.find_stats(BLOBS_PREFIX)
        stats: dict[Digest, FileStat] = {}
        for key, stat in found.items():
            digest = parse_blob_key(key)
            if digest is not None:
                stats[digest] = stat
        return stats

    def delete(self, digest: Digest) -> None:
        self.location.delete(blob_key(digest))


def _missing(digest: Digest, url: str) -> BlobNotFoundError:
    return BlobNotFoundError(
        f"blob {short(digest)} is missing from the store; run 'castore verify' "
        "to list the affected checkpoints",
        digest=digest,
        url=url,
    )


def _pending_digests(data: bytes) -> frozenset[Digest]:
    """The blob digests a pending record lists (its format: maintenance.gc). gc refuses
    a malformed record and deletes nothing it lists, so none of it counts as pending."""
    try:
        keys = [entry[0] for entry in json.loads(data)["candidates"]]
    except (ValueError, KeyError, TypeError, IndexError):
        return frozenset()
    digests = (parse_blob_key(key) for key in keys if isinstance(key, str))
    return frozenset(d for d in digests if d is not None)


class CachedBlobStore(BlobStore):
    """A BlobStore whose reads go through a LocalBlobCache first."""

    def __init__(
        self, location: Location, cache: LocalBlobCache, transfer: TransferOptions | None = None
    ) -> None:
        super().__init__(location, transfer)
        self.cache = cache

    def get(self, digest: Digest) -> bytes | memoryview:
        frame = self.cache.get(digest)
        if frame is not None:
            self.counter.add("from_cache", len(frame))
            return frame
        frame = super().get(digest)
        self.cache.put(digest, frame)
        return frame

    def put(self, digest: Digest, parts: Sequence[Buffer]) -> None:
        """Upload, and keep a copy in the cache: the next save bases its deltas on it and
        a load on this machine needs no download."""
        super().put(digest, parts)
        self.cache.put(digest, b"".join(parts))

    def reader(self, digest: Digest) -> BlobReader:
        """The frame through the cache (see ``get``), whole."""
        return BufferReader(self.get(digest))

    def discard_cached(self, digest: Digest) -> bool:
        return self.cache.discard(digest)
