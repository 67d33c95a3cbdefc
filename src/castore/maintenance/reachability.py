"""Mark: every blob that some manifest part of some run references, from Parquet alone.

A part lists each chunk's digest and the delta chain below its frame (``chunks.base``,
then ``chunks.ancestors``), so what garbage collection must keep is known without
reading a single blob. Only the
``tensors`` column is read. A part that cannot be read stops the mark: its references
are unknown, and a sweep that guessed could delete blobs a checkpoint needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from castore._concurrency import bounded_map
from castore.blobstore.digest import Digest, is_digest
from castore.blobstore.layout import RUNS_PREFIX, check_run_name, part_key
from castore.errors import (
    CastoreError,
    IntegrityError,
    InvalidCheckpointError,
    NotFoundError,
    check_format_version,
)
from castore.manifest.parquet import read_parquet_bytes
from castore.manifest.reader import list_epochs
from castore.manifest.schema import FORMAT_VERSION

if TYPE_CHECKING:
    from castore.blobstore.location import Location

__all__ = ["Reachability", "list_parts", "mark_reachable", "part_digests"]


@dataclass(frozen=True, slots=True)
class Reachability:
    """The blobs committed checkpoints need (digests and delta bases), and how many
    runs and checkpoints were read to find them."""

    referenced: frozenset[Digest]
    n_runs: int
    n_checkpoints: int


def list_parts(location: Location, run: str | None = None) -> list[tuple[str, int]]:
    """(run, epoch) of every committed checkpoint, of one run or of the whole store."""
    if run is not None:
        return [(run, epoch) for epoch in list_epochs(location, run)]
    parts = []
    for name in location.list_names(RUNS_PREFIX):
        try:
            check_run_name(name)
        except InvalidCheckpointError:
            continue
        parts.extend((name, epoch) for epoch in list_epochs(location, name))
    return parts


def mark_reachable(location: Location, *, workers: int) -> Reachability:
    """Read every part of every run (``workers`` at a time) and collect what it needs.

    A part deleted between the listing and its read is skipped: forgetting a checkpoint
    only ever makes blobs unreferenced.

    Raises:
        IntegrityError: a part is unreadable; nothing may be deleted until it is fixed.
        FormatError: a part was written by a newer castore.
    """
    parts = list_parts(location)
    found = bounded_map(
        lambda part: _digests_if_present(location, *part),
        parts,
        size_of=lambda _: 0,
        workers=workers,
        max_in_flight_bytes=1,
    )
    present = [digests for digests in found if digests is not None]
    return Reachability(
        referenced=frozenset().union(*present),
        n_runs=len({run for run, _ in parts}),
        n_checkpoints=len(present),
    )


def part_digests(location: Location, run: str, epoch: int) -> frozenset[Digest]:
    """Every blob one part references: chunk digests and their delta chains."""
    data = location.read(part_key(run, epoch))
    try:
        table = read_parquet_bytes(data, columns=["format_version", "tensors"])
        version = table.column("format_version")[0].as_py()
        chunks = table.column("tensors").combine_chunks().flatten().field("chunks").flatten()
        names = chunks.field("digest").to_pylist() + chunks.field("base").drop_null().to_pylist()
        if chunks.type.get_field_index("ancestors") >= 0:  # format version 2 on
            names += chunks.field("ancestors").flatten().to_pylist()
    except (pa.ArrowException, OSError, KeyError, IndexError) as exc:
        raise IntegrityError(
            f"manifest part is unreadable ({exc}); garbage collection cannot know what it "
            "references: delete or restore the part first",
            run=run,
            epoch=epoch,
        ) from exc
    check_format_version(
        version,
        FORMAT_VERSION,
        "manifest",
        advice="upgrade castore before collecting garbage",
        run=run,
        epoch=epoch,
    )
    malformed = next((name for name in names if not is_digest(name)), None)
    if malformed is not None:
        raise IntegrityError(
            f"manifest part names a malformed blob digest {malformed!r:.80}", run=run, epoch=epoch
        )
    return frozenset(Digest(name) for name in names)


def _digests_if_present(location: Location, run: str, epoch: int) -> frozenset[Digest] | None:
    try:
        return part_digests(location, run, epoch)
    except NotFoundError:
        return None
    except CastoreError as exc:
        exc.url = exc.url or location.url
        raise
