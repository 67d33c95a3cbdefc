"""FlakyFileSystem: an fsspec wrapper that fails a fraction of calls transiently.

It sits where a real network would drop connections: castore sees the same exceptions
s3fs and gcsfs raise for a reset connection, and must retry them.
"""

from __future__ import annotations

import random
import threading
from typing import TYPE_CHECKING

from fsspec import AbstractFileSystem

if TYPE_CHECKING:
    from collections.abc import Callable

_WRAPPED = ("cat_file", "pipe_file", "exists", "ls", "find", "info", "rm_file")
_DELEGATED = ("makedirs", "mkdir", "_parent", "_strip_protocol")


class FlakyFileSystem(AbstractFileSystem):
    """Delegates to ``inner``; each wrapped call fails with ``error()`` at ``rate``.

    A failed write may or may not have reached the inner filesystem (``lost_reply``
    decides), as when a PUT succeeds but its answer is lost.
    """

    protocol = "flaky"

    def __init__(
        self,
        inner: AbstractFileSystem,
        *,
        rate: float,
        seed: int = 0,
        error: Callable[[], Exception] = lambda: ConnectionResetError("injected reset"),
        lost_reply: float = 0.5,
    ) -> None:
        super().__init__(skip_instance_cache=True)
        self.inner = inner
        self.rate = rate
        self.error = error
        self.lost_reply = lost_reply
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.failures = 0
        self.calls = 0

    def _roll(self) -> float:
        with self._lock:
            self.calls += 1
            return self._random.random()

    def _flaky(self, name: str) -> Callable[..., object]:
        method = getattr(self.inner, name)

        def call(*args: object, **kwargs: object) -> object:
            if self._roll() < self.rate:
                with self._lock:
                    self.failures += 1
                if name == "pipe_file" and self._random.random() < self.lost_reply:
                    method(*args, **kwargs)
                raise self.error()
            return method(*args, **kwargs)

        return call

    def __getattribute__(self, name: str) -> object:
        if name in _WRAPPED:
            return object.__getattribute__(self, "_flaky")(name)
        if name in _DELEGATED:
            return getattr(object.__getattribute__(self, "inner"), name)
        return super().__getattribute__(name)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.inner.invalidate_cache(path)
