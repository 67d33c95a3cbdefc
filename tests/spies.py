"""Spies on castore's internals for tests that count what a code path did."""

from __future__ import annotations

from typing import Any


def record_digests(monkeypatch: Any, module: object, name: str) -> list[str]:
    """Make ``module.name`` (a function whose second argument is a blob digest) record that
    digest on each call, and still do what it did; return the growing list."""
    real = getattr(module, name)
    digests: list[str] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        digests.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return digests
