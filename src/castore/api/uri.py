"""Checkpoint URIs: one string that names a store, a run and an epoch.

``castore+<store-url>#<run>@<epoch>``, for example ``castore+s3://bucket/ckpts#ppo@40``
or ``castore+file:///data/ckpts#ppo@40``; without ``@<epoch>`` it means the run's latest
checkpoint. Run names cannot contain ``#`` or ``@``, so the last ``#`` splits the store
from the run. Credentials never go in a URI: storage options are passed beside it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from castore.api.store import open_store
from castore.blobstore.layout import check_run_name
from castore.errors import InvalidCheckpointError

if TYPE_CHECKING:
    from castore.api.load import Keys, MapLocation
    from castore.api.store import Store

__all__ = ["CheckpointURI", "checkpoint_uri", "load", "parse_uri"]

SCHEME = "castore+"
_EPOCH_RE = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class CheckpointURI:
    """A parsed checkpoint URI; ``epoch`` None means the latest."""

    store: str
    run: str
    epoch: int | None = None

    def __str__(self) -> str:
        at = f"@{self.epoch}" if self.epoch is not None else ""
        return f"{SCHEME}{self.store}#{self.run}{at}"


def checkpoint_uri(store: Store, run: str, epoch: int | None = None) -> str:
    """The URI of ``run@epoch`` in ``store``; a local store is named by its absolute path,
    so the URI means the same from any working directory."""
    url = "file://" + store.location.root if store.location.is_local else store.url
    return str(CheckpointURI(url, check_run_name(run), epoch))


def parse_uri(uri: object) -> CheckpointURI:
    """Split a checkpoint URI into store, run and epoch.

    Raises:
        InvalidCheckpointError: not a ``castore+...#run[@epoch]`` string.
    """
    if not isinstance(uri, str) or not uri.startswith(SCHEME) or "#" not in uri:
        raise InvalidCheckpointError(
            f"not a checkpoint URI: {uri!r:.120}; expected castore+<store-url>#<run>[@<epoch>]"
        )
    store, _, fragment = uri[len(SCHEME) :].rpartition("#")
    run, at, epoch = fragment.partition("@")
    if not store or (at and not _EPOCH_RE.fullmatch(epoch)):
        raise InvalidCheckpointError(
            f"not a checkpoint URI: {uri!r:.120}; expected castore+<store-url>#<run>[@<epoch>]"
        )
    return CheckpointURI(store, check_run_name(run), int(epoch) if at else None)


def load(
    uri: str | os.PathLike[str],
    *,
    trust: bool = False,
    map_location: MapLocation = None,
    keys: Keys = None,
    mmap: bool = False,
    verify: bool = True,
    **storage_options: Any,
) -> Any:
    """Load the checkpoint a URI names (``castore+s3://bucket/ckpts#ppo@40``); storage
    options (credentials, endpoints) go to fsspec. See ``Run.load`` for the rest.

    Raises:
        InvalidCheckpointError: a malformed URI.
        NotFoundError: no store, run or epoch there.
        UnsafeLoadError: the checkpoint holds a pickled object and ``trust`` is false.
    """
    ref = parse_uri(os.fspath(uri) if isinstance(uri, os.PathLike) else uri)
    store = open_store(ref.store, create=False, **storage_options)
    return store.run(ref.run).load(
        ref.epoch, trust=trust, map_location=map_location, keys=keys, mmap=mmap, verify=verify
    )
