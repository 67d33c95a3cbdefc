"""Checkpoint URIs: format, parse, and castore.load through one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import castore

RUN_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,20}", fullmatch=True).filter(
    lambda name: ".." not in name
)


@given(
    store=st.sampled_from(["s3://bucket/ckpts", "gs://b/p#x", "file:///data/ckpts", "memory://m"]),
    run=RUN_NAMES,
    epoch=st.one_of(st.none(), st.integers(0, 10**9)),
)
def test_uris_round_trip(store, run, epoch):
    uri = str(castore.CheckpointURI(store, run, epoch))
    assert uri.startswith("castore+")
    assert castore.parse_uri(uri) == castore.CheckpointURI(store, run, epoch)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket#run@1",
        "castore+s3://bucket",
        "castore+#run@1",
        "castore+s3://bucket#run@x",
        "castore+s3://bucket#run@-1",
        "castore+s3://bucket#ru/n@1",
        "castore+s3://bucket#@1",
        42,
    ],
)
def test_malformed_uris_are_refused(uri):
    with pytest.raises(castore.InvalidCheckpointError):
        castore.parse_uri(uri)


def test_local_uri_is_absolute_and_loads_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = castore.open("ckpts")
    store.run("ppo").save({"w": torch.arange(4.0)}, epoch=3, metrics={"score": 1.0})
    store.run("ppo").save({"w": torch.arange(5.0)}, epoch=4)
    uri = castore.checkpoint_uri(store, "ppo", 3)
    assert uri == f"castore+file://{tmp_path}/ckpts#ppo@3"
    monkeypatch.chdir("/")
    assert torch.equal(castore.load(uri)["w"], torch.arange(4.0))
    latest = castore.checkpoint_uri(store, "ppo")
    assert latest.endswith("#ppo")
    assert torch.equal(castore.load(latest)["w"], torch.arange(5.0))
    assert torch.equal(castore.load(uri, keys="w")["w"], torch.arange(4.0))


def test_load_of_a_missing_store_or_epoch_is_not_found(tmp_path):
    with pytest.raises(castore.NotFoundError):
        castore.load(f"castore+file://{tmp_path}/nothing#run@1")
    assert not (tmp_path / "nothing").exists()
    castore.open(tmp_path / "s").run("r").save({"w": torch.ones(1)}, epoch=0)
    with pytest.raises(castore.NotFoundError, match="epoch 9"):
        castore.load(f"castore+file://{tmp_path}/s#r@9")
