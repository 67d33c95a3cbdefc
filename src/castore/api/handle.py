"""SaveHandle: the promise of an asynchronous save."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

    from castore.api.save import SaveInfo

__all__ = ["SaveHandle"]


class SaveHandle:
    """Returned by ``run.save(..., blocking=False)`` once what changed is copied to host
    memory; the save hashes, encodes, uploads and commits in the background."""

    def __init__(self, future: Future[SaveInfo], run: str, epoch: int) -> None:
        self._future = future
        self.run = run
        self.epoch = epoch

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"castore.SaveHandle({self.run!r}, epoch={self.epoch}, {state})"

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> SaveInfo:
        """Wait for the commit and return what the save did, or raise its error."""
        return self._future.result(timeout)
