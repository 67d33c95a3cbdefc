"""The ``backend`` fixture: every contract test runs once per storage backend.

Each test gets a fresh, unique root and a raw fsspec filesystem to check effects through
a side door, never only through castore.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import fsspec
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fsspec import AbstractFileSystem

BACKENDS = ["local", "memory", "s3", "gcs"]


@dataclass(frozen=True)
class Backend:
    name: str
    url: str
    raw_fs: AbstractFileSystem
    root: str
    storage_options: dict[str, object] = field(default_factory=dict)

    def raw_path(self, key: str) -> str:
        return f"{self.root}/{key}"


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "local":
        root = str(tmp_path_factory.mktemp("store"))
        yield Backend("local", root, fsspec.filesystem("file"), root)
    elif request.param == "memory":
        name = f"castore-test-{uuid.uuid4().hex}"
        fs = fsspec.filesystem("memory")
        yield Backend("memory", f"memory://{name}", fs, f"/{name}")
        if fs.exists(f"/{name}"):
            fs.rm(f"/{name}", recursive=True)
    else:
        server = request.getfixturevalue(f"{request.param}_server")
        prefix = f"t-{uuid.uuid4().hex}"
        fs = server.new_filesystem()
        yield Backend(
            request.param,
            server.url(prefix),
            fs,
            f"{server.bucket}/{prefix}",
            dict(server.storage_options),
        )
