"""Shared fixtures: hypothesis profiles and the backend fixture (see backends.py)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

from castore._config import CACHE_DIR_ENV
from tests.backends import backend  # noqa: F401  (fixture)

# tests.servers must be imported before anything imports gcsfs (see its docstring).
from tests.servers import gcs_server, s3_server  # noqa: F401  (fixtures)

if TYPE_CHECKING:
    from collections.abc import Iterator

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def hashed_bytes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes the save path hashes in full (sampled windows are not counted)."""
    import castore.api.tensor_blobs as tensor_blobs

    counted: list[int] = []
    original = tensor_blobs.hash_bytes

    def counting(data: object) -> str:
        counted.append(len(data))  # type: ignore[arg-type]
        return original(data)  # type: ignore[arg-type]

    monkeypatch.setattr(tensor_blobs, "hash_bytes", counting)
    return counted


@pytest.fixture(scope="session", autouse=True)
def _cache_dir_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remote stores cache blobs locally; never in the user's real cache directory."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("castore-cache")))
        yield


_SKIPPED_CONTRACTS: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid.startswith("tests/contract/"):
        _SKIPPED_CONTRACTS.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Backend contract tests must never be skipped: a skip fails the run."""
    if _SKIPPED_CONTRACTS and exitstatus == pytest.ExitCode.OK:
        print(f"\nskipped contract tests fail the run: {', '.join(_SKIPPED_CONTRACTS)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
