"""Reusing the digests of tensors that have not changed since this process last saved.

In-place operations bump a tensor's version counter, which its views and ``detach()``
share, so a tensor at the same memory with the same version, dtype, shape and strides
as at the previous save holds the same bytes: its chunks are neither read nor hashed
again, which makes saving a mostly frozen model cost what changed. The memo keeps the
previous save's tensors alive, so their memory cannot be reused by a new tensor that
would then look unchanged. Lazily conjugated or negated views are never reused (their
bytes are not the values they show).

Writes through ``tensor.data`` or a numpy view escape the version counter. As a guard,
three windows of 4 KiB (start, middle, end) of every piece of every reused chunk are read
again and compared byte for byte with the copy the memo took of them (at most 12 KiB per
piece, 0.3% of a chunked tensor). That catches every such write that changes a byte
inside a window, so every write touching a whole chunk (a soft target-network update,
``.data.copy_``), but can miss a partial one that falls between windows (one embedding
row): code that writes weights that way saves with ``reuse_unchanged=False``.

When the entries have the same layout as at the previous save (the same names, roles,
dtypes and shapes, so the same chunk plan), the plan is reused and, if no version counter
moved, the check is one read of every window straight from the tensors' memory and one
comparison; otherwise chunks are matched by key (``chunk_key``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from castore.snapshot.refs import Role
from castore.snapshot.tensors import host_bytes, memory_bytes

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

    from castore.blobstore.digest import Digest
    from castore.snapshot.chunking import PlannedChunk
    from castore.snapshot.refs import TensorRef
    from castore.snapshot.tensors import EntryPlan, PlannedEntry

__all__ = [
    "ChunkKey",
    "EntryState",
    "Layout",
    "SaveMemo",
    "Windows",
    "chunk_key",
    "entry_layout",
    "entry_states",
    "read_windows",
    "remember",
    "reuse_digests",
]

_WINDOW_BYTES = 4096

Layout = tuple[tuple[object, ...], ...]
# (data pointer, version) of an entry whose bytes may be reused; None where they may not.
EntryState = tuple[int, int] | None
ChunkKey = tuple[tuple[object, ...], ...]
# A sampled window: (entry index, first byte, end byte) of the entry's bytes.
Window = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Samples:
    """Which chunks a memo sampled and where: chunk ``k`` is plan chunk ``chunks[k]``, its
    windows are ``windows[bounds[k]:bounds[k + 1]]`` and its sampled bytes are
    ``sample[offsets[k]:offsets[k + 1]]`` of the memo."""

    chunks: tuple[int, ...]
    windows: tuple[Window, ...]
    bounds: tuple[int, ...]
    offsets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SaveMemo:
    """What one save planned, hashed and sampled, to be reused by the next save.

    ``layout``, ``states`` and ``chunks`` are the entries' layout and state and the chunk
    plan made with ``chunking``; ``digests`` holds every chunk's digest and ``refs`` the
    refs committed; ``sample`` the bytes of every sampled window, in ``samples`` order;
    ``views`` each entry's bytes read in place (None where that needs a copy or a device
    read) and ``gather`` every window as a slice of them, or None unless all are.
    ``entry_plan`` is the save's ``plan_entries`` result, reused for an identical state.
    ``bases`` holds decoded bytes of chunks of that save by digest, the next save's delta
    bases (see ``deltas.BaseCache``).
    """

    epoch: int
    layout: Layout
    chunking: object
    chunks: tuple[PlannedChunk, ...]
    states: tuple[EntryState, ...]
    digests: tuple[Digest, ...]
    refs: tuple[TensorRef, ...]
    samples: Samples
    sample: bytes = field(repr=False)
    views: tuple[memoryview | None, ...] = field(repr=False)
    gather: tuple[memoryview, ...] | None = field(repr=False)
    tensors: list[torch.Tensor] = field(repr=False)
    entry_plan: EntryPlan | None = field(default=None, repr=False)
    bases: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)

    def sampled_bytes(self, k: int) -> bytes:
        return self.sample[self.samples.offsets[k] : self.samples.offsets[k + 1]]

    def by_key(self) -> dict[ChunkKey, int]:
        """Sampled chunks by key (``chunk_key``): the index ``k`` into ``samples``."""
        found: dict[ChunkKey, int] = {}
        for k, index in enumerate(self.samples.chunks):
            key = chunk_key(self.chunks[index], self.layout, self.states)
            if key is not None:
                found[key] = k
        return found


def entry_layout(entries: Sequence[PlannedEntry]) -> Layout:
    """Everything of the entries the chunk plan and the refs depend on, but their bytes."""
    return tuple(
        (
            e.name,
            e.role,
            e.dtype,
            e.shape,
            e.device,
            e.base,
            e.storage_offset,
            e.stride,
            e.source is None,
        )
        for e in entries
    )


def entry_states(entries: Sequence[PlannedEntry]) -> tuple[EntryState, ...]:
    """(data pointer, version) of each entry whose chunks may be reused, else None: tensor
    entries whose source is contiguous and shows the bytes it holds."""
    states: list[EntryState] = []
    for entry in entries:
        t = entry.source
        if (
            entry.role is not Role.TENSOR
            or t is None
            or not t.is_contiguous()
            or t.is_conj()
            or t.is_neg()
        ):
            states.append(None)
        else:
            states.append((t.data_ptr(), t._version))
    return tuple(states)


def chunk_key(chunk: PlannedChunk, layout: Layout, states: Sequence[EntryState]) -> ChunkKey | None:
    """Identity of a chunk's source memory and version, or None if it cannot be trusted."""
    key = []
    for piece in chunk.pieces:
        state = states[piece.entry]
        if state is None:
            return None
        key.append((layout[piece.entry], state, piece.start, piece.length, piece.offset))
    return tuple(key)


def reuse_digests(
    chunks: Sequence[PlannedChunk],
    entries: Sequence[PlannedEntry],
    layout: Layout,
    states: tuple[EntryState, ...],
    memo: SaveMemo | None,
    *,
    same_plan: bool,
) -> dict[int, Digest]:
    """Digests of chunks unchanged since ``memo`` whose sampled windows still match.

    ``same_plan``: ``chunks`` is ``memo.chunks``, planned for entries of ``layout``.
    """
    found: dict[int, Digest] = {}
    if memo is None:
        return found
    if not same_plan:
        reader = _Reader(entries)
        by_key = memo.by_key()
        for index, chunk in enumerate(chunks):
            key = chunk_key(chunk, layout, states)
            k = by_key.get(key) if key is not None else None
            if k is not None and reader.chunk(chunk) == memo.sampled_bytes(k):
                found[index] = memo.digests[memo.samples.chunks[k]]
        return found
    samples = memo.samples
    if states == memo.states and memo.gather is not None and b"".join(memo.gather) == memo.sample:
        # Nothing moved: every window, read in place, against the memo's copy at once.
        return {index: memo.digests[index] for index in samples.chunks}
    unmoved = [s is not None and s == m for s, m in zip(states, memo.states, strict=True)]
    reader = _Reader(entries, memo.views, unmoved)
    for k, index in enumerate(samples.chunks):
        if all(unmoved[p.entry] for p in chunks[index].pieces):
            windows = samples.windows[samples.bounds[k] : samples.bounds[k + 1]]
            if reader.windows(windows) == memo.sampled_bytes(k):
                found[index] = memo.digests[index]
    return found


@dataclass(frozen=True, slots=True)
class Windows:
    """The sampled windows a memo compares the next save against, read at save time:
    where they are (``samples``), their bytes (``sample``), each entry's bytes in place
    (``views``) and every window as a slice of them (``gather``, or None)."""

    samples: Samples
    sample: bytes = field(repr=False)
    views: tuple[memoryview | None, ...] = field(repr=False)
    gather: tuple[memoryview, ...] | None = field(repr=False)


def read_windows(
    chunks: tuple[PlannedChunk, ...],
    entries: Sequence[PlannedEntry],
    states: tuple[EntryState, ...],
    *,
    previous: SaveMemo | None,
    reused_all: bool,
) -> Windows:
    """Read the windows of a save now, while the entries hold the bytes being saved.

    ``previous`` is the memo this save reused with the same plan, if any; ``reused_all``
    that every chunk it sampled passed its check, so its copy still holds.
    """
    if previous is not None and previous.states == states:
        samples, views, gather = previous.samples, previous.views, previous.gather
        sample = previous.sample if reused_all else None
    else:
        if previous is not None and [s is None for s in states] == [
            s is None for s in previous.states
        ]:
            samples = previous.samples
        else:
            samples = _sample_plan(chunks, states)
        views = _views(entries, states, previous)
        sampled_entries = {w[0] for w in samples.windows}
        gather = (
            tuple(views[e][b:end] for e, b, end in samples.windows)  # type: ignore[index]
            if all(views[e] is not None for e in sampled_entries)
            else None
        )
        sample = None
    if sample is None:
        if gather is not None:
            sample = b"".join(gather)
        else:
            reader = _Reader(entries, views, [v is not None for v in views])
            sample = reader.windows(samples.windows)
    return Windows(samples, sample, views, gather)


def remember(
    epoch: int,
    chunking: object,
    chunks: tuple[PlannedChunk, ...],
    entries: Sequence[PlannedEntry],
    layout: Layout,
    states: tuple[EntryState, ...],
    digests: tuple[Digest, ...],
    refs: tuple[TensorRef, ...],
    windows: Windows,
) -> SaveMemo:
    """The memo of a finished save, with the windows ``read_windows`` read when it began."""
    tensors = [e.source for e in entries if e.source is not None and e.role is Role.TENSOR]
    return SaveMemo(
        epoch=epoch,
        layout=layout,
        chunking=chunking,
        chunks=chunks,
        states=states,
        digests=digests,
        refs=refs,
        samples=windows.samples,
        sample=windows.sample,
        views=windows.views,
        gather=windows.gather,
        tensors=tensors,
    )


def _sample_plan(chunks: Sequence[PlannedChunk], states: Sequence[EntryState]) -> Samples:
    """The windows of every chunk whose pieces all may be reused, with their bounds."""
    indices: list[int] = []
    windows: list[Window] = []
    bounds = [0]
    offsets = [0]
    for index, chunk in enumerate(chunks):
        if any(states[p.entry] is None for p in chunk.pieces):
            continue
        indices.append(index)
        found = _chunk_windows(chunk)
        windows.extend(found)
        bounds.append(len(windows))
        offsets.append(offsets[-1] + sum(end - begin for _, begin, end in found))
    return Samples(tuple(indices), tuple(windows), tuple(bounds), tuple(offsets))


def _chunk_windows(chunk: PlannedChunk) -> list[Window]:
    """Start, middle and end windows of each piece (one or two for short pieces)."""
    windows: list[Window] = []
    for piece in chunk.pieces:
        starts = sorted(
            {
                0,
                max(0, piece.length // 2 - _WINDOW_BYTES // 2),
                max(0, piece.length - _WINDOW_BYTES),
            }
        )
        for start in starts:
            begin = piece.start + start
            windows.append((piece.entry, begin, begin + min(_WINDOW_BYTES, piece.length - start)))
    return windows


def _views(
    entries: Sequence[PlannedEntry],
    states: Sequence[EntryState],
    previous: SaveMemo | None,
) -> tuple[memoryview | None, ...]:
    """Each reusable CPU entry's bytes in place; a previous view of the same layout at the
    same address is the same memory, so it is kept rather than made again."""
    views: list[memoryview | None] = []
    for index, (entry, state) in enumerate(zip(entries, states, strict=True)):
        view = None
        if state is not None and entry.source is not None:
            old = previous.states[index] if previous is not None else None
            if previous is not None and old is not None and old[0] == state[0]:
                view = previous.views[index]
            else:
                view = memory_bytes(entry.source)
        views.append(view)
    return tuple(views)


class _Reader:
    """Reads windows of entries' bytes: through ``views`` where ``valid`` says they still
    show the entry, else through a view or device read made once per entry."""

    def __init__(
        self,
        entries: Sequence[PlannedEntry],
        views: Sequence[memoryview | None] = (),
        valid: Sequence[bool] = (),
    ) -> None:
        self._entries = entries
        self._cache: dict[int, memoryview | torch.Tensor] = {
            i: v for i, (v, ok) in enumerate(zip(views, valid, strict=True)) if ok and v is not None
        }

    def _bytes(self, index: int) -> memoryview | torch.Tensor:
        found = self._cache.get(index)
        if found is None:
            source = self._entries[index].source
            assert source is not None
            if source.device.type == "cpu":
                found = host_bytes(source)
            else:
                found = source.detach().reshape(-1).view(torch.uint8)
            self._cache[index] = found
        return found

    def windows(self, windows: Sequence[Window]) -> bytes:
        parts: list[bytes | memoryview] = []
        for index, begin, end in windows:
            window = self._bytes(index)[begin:end]
            parts.append(window if isinstance(window, memoryview) else window.cpu().numpy().data)
        return b"".join(parts)

    def chunk(self, chunk: PlannedChunk) -> bytes:
        return self.windows(_chunk_windows(chunk))
