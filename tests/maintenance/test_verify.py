"""Verify and repair: damage is found, named by run, epoch and tensor, and restored."""

from __future__ import annotations

import pytest
import torch

import castore
from castore.blobstore.layout import blob_key, part_key
from castore.codec.header import unpack_header
from tests.maintenance.helpers import flip_last_byte, open_store


def saved_store(url: str, **options) -> castore.Store:
    """Run 'ppo': epochs 0-2 of a model with tied and viewed tensors; run 'eval': one."""
    store = open_store(url, **options)
    big = torch.arange(8192.0)  # two chunks
    shared = torch.arange(12.0)
    for epoch in range(3):
        big[0] = epoch
        state = {"big": big, "tied": big, "a": shared[:6], "b": shared[6:], "bias": torch.ones(3)}
        store.run("ppo").save(state, epoch=epoch)
    store.run("eval").save({"head": torch.ones(4096) * 7}, epoch=0)
    return store


def chunk_of(store, run, epoch, name, index=0):
    ref = next(r for r in store.run(run).record(epoch).tensors if r.name == name)
    return ref.chunks[index]


def test_a_clean_store_verifies(store_url):
    store = saved_store(store_url)
    report = store.verify()
    assert report.ok
    assert report.n_checkpoints == 4
    assert report.n_blobs == len(store.blobs.listing())
    assert store.verify("eval").n_checkpoints == 1


def test_missing_and_corrupt_blobs_name_checkpoints_and_tensors(store_url):
    store = saved_store(store_url)
    unchanged = chunk_of(store, "ppo", 2, "big", 1).digest  # shared by every epoch
    store.location.delete(blob_key(unchanged))
    head = chunk_of(store, "eval", 0, "head").digest
    flip_last_byte(store, head)

    report = store.verify()
    assert not report.ok
    kinds = {p.digest: p.kind for p in report.problems}
    assert kinds == {unchanged: "missing", head: "corrupt"}
    assert report.affected() == {
        ("eval", 0): ["head"],
        ("ppo", 0): ["big", "tied"],
        ("ppo", 1): ["big", "tied"],
        ("ppo", 2): ["big", "tied"],
    }
    only_eval = store.verify("eval")
    assert [p.digest for p in only_eval.problems] == [head]


def test_views_of_a_shared_storage_are_named(store_url):
    store = saved_store(store_url)
    storage = next(r for r in store.run("ppo").record(0).tensors if r.role == "storage")
    store.location.delete(blob_key(storage.chunks[0].digest))
    tensors = store.verify("ppo").affected()[("ppo", 0)]
    assert {"a", "b"} <= set(tensors)


def test_a_broken_delta_base_is_reported_once_with_its_deltas_uses(store_url):
    store = saved_store(store_url)
    delta = chunk_of(store, "ppo", 2, "big", 0)
    assert delta.base is not None
    store.location.delete(blob_key(delta.base))
    report = store.verify("ppo")
    assert [(p.digest, p.kind) for p in report.problems] == [(delta.base, "missing")]
    users = {
        ("ppo", e)
        for e in range(3)
        if delta.base
        in {c.digest for t in store.run("ppo").record(e).tensors for c in t.chunks}
        | {d for t in store.run("ppo").record(e).tensors for c in t.chunks for d in c.lineage}
    }
    assert ("ppo", 2) in users
    assert len(users) >= 2
    assert set(report.affected()) == users


def test_an_unreadable_part_is_a_problem(store_url):
    store = saved_store(store_url)
    store.location.write(part_key("ppo", 1), [b"garbage"])
    report = store.verify()
    assert not report.ok
    assert [(p.run, p.epoch) for p in report.part_problems] == [("ppo", 1)]


def test_verify_of_an_unknown_run(store_url):
    with pytest.raises(castore.NotFoundError, match="no checkpoints"):
        saved_store(store_url).verify("nope")


def test_verify_reads_the_store_not_the_local_cache(tmp_path):
    cache = castore.CacheOptions(enabled=True, directory=str(tmp_path / "cache"))
    store = saved_store(str(tmp_path / "store"), cache=cache)
    head = chunk_of(store, "eval", 0, "head").digest
    flip_last_byte(store, head)
    assert store.blobs.cache.get(head) is not None  # a sound copy sits in the cache
    assert [p.digest for p in store.verify().problems] == [head]

    # That cache directory is a good source to repair from.
    repair = store.repair(store.verify(), str(tmp_path / "cache"))
    assert repair.repaired == (head,)
    assert store.verify().ok


def test_repair_from_a_replica_restores_missing_and_corrupt_blobs(store_url):
    store = saved_store(store_url)
    replica_url = f"{store_url}-replica"
    saved_store(replica_url)
    missing = chunk_of(store, "ppo", 2, "big", 1).digest
    corrupt = chunk_of(store, "eval", 0, "head").digest
    store.location.delete(blob_key(missing))
    flip_last_byte(store, corrupt)

    repair = store.repair(store.verify(), replica_url)
    assert repair.ok
    assert set(repair.repaired) == {missing, corrupt}
    assert store.verify().ok
    assert store.run("ppo").load(2)["big"][1:].tolist() == list(range(1, 8192))


def test_repair_reports_what_the_source_lacks(store_url):
    store = saved_store(store_url)
    replica_url = f"{store_url}-replica"
    replica = open_store(replica_url)
    replica.run("other").save({"x": torch.ones(2)}, epoch=0)
    lost = chunk_of(store, "eval", 0, "head").digest
    store.location.delete(blob_key(lost))
    repair = store.repair(store.verify(), replica_url)
    assert not repair.ok
    assert repair.failed == ((lost, "not in the source either"),)
    assert not store.verify().ok


def test_a_source_delta_on_a_foreign_base_is_written_whole(store_url):
    store = open_store(store_url)
    target = torch.arange(4096.0)
    store.run("r").save({"w": target}, epoch=0)
    replica_url = f"{store_url}-replica"
    replica = open_store(replica_url)
    replica.run("r").save({"w": target + 0.5}, epoch=0)
    replica.run("r").save({"w": target}, epoch=1)  # the same blob, as a delta there
    digest = chunk_of(store, "r", 0, "w").digest
    assert chunk_of(replica, "r", 1, "w").base is not None

    store.location.delete(blob_key(digest))
    assert store.repair(store.verify(), replica_url).ok
    assert unpack_header(store.location.read(blob_key(digest))).base_digest is None
    assert torch.equal(store.run("r").load(0)["w"], target)
