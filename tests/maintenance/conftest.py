"""Maintenance tests run on a local and a memory store; the contract suite
(tests/contract/test_maintenance_contract.py) covers S3 and GCS as well."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import fsspec
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(params=["local", "memory"])
def store_url(request, tmp_path) -> Iterator[str]:
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    name = f"castore-maint-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    fs = fsspec.filesystem("memory")
    for root in (f"/{name}", f"/{name}-replica"):
        if fs.exists(root):
            fs.rm(root, recursive=True)
