"""Shared fixtures: hypothesis profiles and the backend fixture (see backends.py)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tests.backends import backend  # noqa: F401  (fixture)

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
