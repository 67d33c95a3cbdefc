"""Checkpoint: a handle on one committed checkpoint, cheap until tensors are asked for.

It is a read-only mapping from tensor names to tensors: ``ckpt["model.fc.weight"]``
fetches only that tensor's blobs on first access and keeps it, ``"name" in ckpt``,
``len(ckpt)`` and iteration read the manifest alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from castore.api.load import load_tensors
from castore.snapshot.select import unknown_key, visible_names

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    import torch

    from castore.api.load import Keys, MapLocation
    from castore.api.load_into import IncompatibleKeys
    from castore.api.run import Run
    from castore.manifest.records import CheckpointRecord

__all__ = ["Checkpoint"]


class Checkpoint:
    """One checkpoint of a run: its manifest row now, its tensors when asked for.

    ``follow()`` yields these, and ``run.open(epoch)`` returns one.
    """

    def __init__(self, run: Run, epoch: int) -> None:
        self.run = run
        self.epoch = epoch
        self._tensors: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"castore.Checkpoint({self.run.name!r}, epoch={self.epoch})"

    @property
    def record(self) -> CheckpointRecord:
        return self.run.record(self.epoch)

    @property
    def step(self) -> int | None:
        return self.record.step

    @property
    def created_at(self) -> datetime:
        return self.record.created_at

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics saved with the checkpoint, overlaid by any annotated since."""
        return {**self.record.metrics, **self.run.annotations().get(self.epoch, {})}

    def keys(self) -> list[str]:
        """Names of the checkpoint's tensors (``model.fc.weight``...), in tree order."""
        return visible_names(self.record.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in set(self.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        """The tensor called ``key`` (a name from ``keys()``, no patterns), on the CPU.

        Only its blobs are fetched, on first access; later accesses return the same tensor.

        Raises:
            NotFoundError: no tensor of that name; it is also a ``KeyError``.
        """
        if key not in self._tensors:
            if key not in self:
                raise unknown_key(str(key), self.keys())
            store = self.run.store
            self._tensors.update(
                load_tensors(store.blobs, self.record, [key], transfer=store.options.transfer)
            )
        return self._tensors[key]

    def load(
        self,
        *,
        keys: Keys = None,
        mmap: bool = False,
        map_location: MapLocation = None,
        verify: bool = True,
        trust: bool = False,
    ) -> Any:
        """The checkpoint's tree, or the part ``keys`` selects; see ``Run.load``."""
        return self.run.load(
            self.epoch,
            keys=keys,
            mmap=mmap,
            map_location=map_location,
            verify=verify,
            trust=trust,
        )

    def load_into(
        self,
        module: torch.nn.Module,
        *,
        strict: bool = True,
        prefix: str | None = None,
        verify: bool = True,
    ) -> IncompatibleKeys:
        """Write this checkpoint into ``module``'s parameters; see ``Run.load_into``."""
        return self.run.load_into(module, self.epoch, strict=strict, prefix=prefix, verify=verify)

    def annotate(self, metrics: dict[str, object]) -> None:
        self.run.annotate(self.epoch, metrics)
