"""Permanent backend failures fail at once, with an error naming the store."""

from __future__ import annotations

import time

import pytest
import torch

import castore


@pytest.mark.parametrize("name", ["s3", "gcs"])
def test_missing_bucket_fails_fast_and_names_the_store(name, request):
    server = request.getfixturevalue(f"{name}_server")
    url = f"{server.protocol}://no-such-bucket-castore/prefix"
    started = time.perf_counter()
    with pytest.raises(castore.CastoreError) as caught:
        castore.open(url, **server.storage_options).run("r").save({"w": torch.ones(2)}, epoch=0)
    assert time.perf_counter() - started < 5.0
    assert f"store={url}" in str(caught.value)
    assert "gave up after" not in " ".join(getattr(caught.value, "__notes__", []))


@pytest.mark.parametrize("name", ["s3", "gcs"])
def test_reading_a_missing_bucket_is_not_found(name, request):
    server = request.getfixturevalue(f"{name}_server")
    url = f"{server.protocol}://no-such-bucket-castore/prefix"
    with pytest.raises(castore.NotFoundError, match="no castore store here"):
        castore.open(url, create=False, **server.storage_options)


def test_secrets_in_storage_options_never_reach_messages(s3_server):
    options = dict(s3_server.storage_options)
    url = "s3://no-such-bucket-castore/prefix"
    with pytest.raises(castore.CastoreError) as caught:
        castore.open(url, **options).run("r").save({"w": torch.ones(2)}, epoch=0)
    text = str(caught.value) + " ".join(getattr(caught.value, "__notes__", []))
    assert options["secret"] not in text
    assert options["key"] not in text
