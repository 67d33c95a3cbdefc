"""Garbage collection: two passes, a grace period, and what must never be deleted.

Clocks are explicit (``now=``) and grace periods 0 or made up: nothing sleeps.
"""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import castore
import castore.api.save as save_module
from castore.blobstore.layout import GC_PREFIX, blob_key, part_key
from castore.codec.frame import encode_frame
from castore.codec.hashing import hash_bytes
from castore.maintenance.gc import plan_gc
from castore.maintenance.pending import PendingRecord
from castore.manifest.writer import write_part
from tests.maintenance.helpers import LATER, forget_one_chunk, has_blob, open_store, put_orphan


def records(store) -> list[str]:
    return store.location.list_names(GC_PREFIX)


def commit_after(monkeypatch, action):
    """Make the next save run ``action()`` after writing its blobs, before its commit."""

    def delayed(location, record):
        action()
        return write_part(location, record)

    monkeypatch.setattr(save_module, "write_part", delayed)


def test_unreferenced_blob_is_recorded_then_deleted_by_a_later_pass(store_url):
    store = open_store(store_url)
    store.run("r").save({"w": torch.ones(8)}, epoch=0)
    orphan = put_orphan(store, b"left behind by a killed save")
    now = time.time() + LATER

    first = store.gc(grace_s=0, now=now)
    assert (first.deleted_blobs, first.pending_blobs) == (0, 1)
    assert first.pending_key is not None
    assert records(store) == [first.pending_key.split("/")[-1]]
    assert has_blob(store, orphan)

    second = store.gc(grace_s=0, now=now)
    assert (second.deleted_blobs, second.pending_blobs) == (1, 0)
    assert second.deleted_bytes == len(encode_frame(b"left behind by a killed save"))
    assert not has_blob(store, orphan)
    assert records(store) == []
    assert store.run("r").load(0)["w"].tolist() == [1.0] * 8
    assert store.verify().ok


def test_grace_period_guards_both_young_blobs_and_young_records(store_url):
    store = open_store(store_url)
    orphan = put_orphan(store, b"orphan")
    written = store.location.stat(blob_key(orphan)).mtime_s

    young = store.gc(grace_s=100, now=written + 50)
    assert young.pending_blobs == 0, "a blob younger than the grace period is never recorded"
    recorded = store.gc(grace_s=100, now=written + 150)
    assert recorded.pending_blobs == 1
    early = store.gc(grace_s=100, now=written + 200)
    assert (early.deleted_blobs, early.waiting, early.pending_blobs) == (0, 1, 0)
    assert has_blob(store, orphan)
    late = store.gc(grace_s=100, now=written + 250)
    assert late.deleted_blobs == 1
    assert not has_blob(store, orphan)


def test_dry_run_writes_and_deletes_nothing(store_url):
    store = open_store(store_url)
    orphan = put_orphan(store, b"orphan")
    now = time.time() + LATER
    preview = store.gc(grace_s=0, now=now, dry_run=True)
    assert (preview.dry_run, preview.pending_blobs) == (True, 1)
    assert records(store) == []
    store.gc(grace_s=0, now=now)
    preview = store.gc(grace_s=0, now=now, dry_run=True)
    assert preview.deleted_blobs == 1
    assert has_blob(store, orphan)
    assert len(records(store)) == 1


def test_blobs_of_a_save_committing_between_the_passes_are_kept(store_url, monkeypatch):
    store = open_store(store_url)
    collector = open_store(store_url)
    now = time.time() + LATER
    first = []
    commit_after(monkeypatch, lambda: first.append(collector.gc(grace_s=0, now=now)))
    info = store.run("r").save({"w": torch.randn(4096), "b": torch.randn(7)}, epoch=0)
    assert first[0].pending_blobs == info.blobs_written > 0  # unreferenced when recorded

    second = collector.gc(grace_s=0, now=now)
    assert (second.deleted_blobs, second.kept) == (0, info.blobs_written)
    assert store.verify().ok
    assert store.run("r").load(0)["w"].shape == (4096,)


def test_a_save_writes_recorded_candidates_again_and_gc_keeps_them(store_url, monkeypatch):
    store = open_store(store_url)
    w, now = forget_one_chunk(store)
    (digest,) = store.blobs.pending_deletions()
    assert store.blobs.has_many([digest]) == set()  # recorded: counts as absent

    collector = open_store(store_url)
    second = []
    commit_after(monkeypatch, lambda: second.append(collector.gc(grace_s=0, now=now)))
    info = store.run("r").save({"w": w}, epoch=1)
    assert info.blobs_written == 1, "the save wrote the candidate again"
    assert (second[0].deleted_blobs, second[0].kept) == (0, 1)
    assert torch.equal(store.run("r").load(1)["w"], w)
    assert store.verify().ok


def test_a_candidate_rewritten_after_planning_is_kept(store_url):
    store = open_store(store_url)
    orphan = put_orphan(store, b"orphan")
    now = time.time() + LATER
    store.gc(grace_s=0, now=now)
    plan = plan_gc(store.blobs, grace_s=0, workers=2, now=now)
    assert [c.digest for c in plan.delete] == [orphan]
    store.blobs.put(orphan, [encode_frame(b"orphan")])  # a save writes it again
    report = plan.execute(store.location, workers=2, now=now)
    assert (report.deleted_blobs, report.kept) == (0, 1)
    assert has_blob(store, orphan)


def test_delta_bases_are_kept_while_a_delta_references_them(store_url):
    store = open_store(store_url)
    run = store.run("r")
    w = torch.randn(8192)  # two chunks
    run.save({"w": w}, epoch=0)
    w[0] += 1e-3
    run.save({"w": w}, epoch=1)
    chunks = run.record(1).tensors[0].chunks
    bases = {c.base for c in chunks if c.base is not None}
    assert bases, "the changed chunk should be stored as a delta"
    assert not bases & {c.digest for c in chunks}

    run.delete(0)
    now = time.time() + LATER
    store.gc(grace_s=0, now=now)
    assert store.gc(grace_s=0, now=now).deleted_blobs == 0
    assert all(has_blob(store, base) for base in bases)
    assert torch.equal(run.load(1)["w"], w)

    run.delete(1)
    store.gc(grace_s=0, now=now)
    assert store.gc(grace_s=0, now=now).deleted_blobs == 3  # two keyframes, one delta
    assert store.blobs.listing() == {}


def test_a_base_that_an_unreferenced_young_blob_needs_is_kept(store_url):
    store = open_store(store_url)
    base = put_orphan(store, bytes(range(256)) * 4)
    now = time.time() + LATER
    store.gc(grace_s=0, now=now)
    # A save in flight wrote a delta against it, and has not committed yet.
    data = bytes(range(1, 256)) * 4 + b"\0\0\0\0"
    delta = encode_frame(data, base=bytes(range(256)) * 4, base_digest=base)
    store.blobs.put(hash_bytes(data), [delta])

    report = store.gc(grace_s=0, now=now)
    assert (report.deleted_blobs, report.kept) == (0, 1)
    assert has_blob(store, base)
    store.gc(grace_s=0, now=now)  # nothing committed it: both go, in order
    assert store.blobs.listing() == {}


def test_stale_temporary_files_are_removed_in_two_passes(store_url):
    store = open_store(store_url)
    key = f"{blob_key('ab' * 32)}.tmp-{'0' * 32}"
    store.location.write(key, [b"half a frame"])
    store.location.write("runs/r/manifest/0000000001.parquet.tmp-" + "1" * 32, [b"x"])
    now = time.time() + LATER
    assert store.gc(grace_s=0, now=now).pending_temporaries == 2
    assert store.gc(grace_s=0, now=now).deleted_temporaries == 2
    assert not store.location.exists(key)
    assert store.gc(grace_s=0, now=now, dry_run=True).pending_temporaries == 0


def test_an_unreadable_part_stops_gc_before_any_delete(store_url):
    store = open_store(store_url)
    store.run("r").save({"w": torch.ones(2)}, epoch=0)
    orphan = put_orphan(store, b"orphan")
    now = time.time() + LATER
    store.gc(grace_s=0, now=now)
    store.location.write(part_key("r", 0), [b"not parquet"])
    with pytest.raises(castore.IntegrityError, match="unreadable") as raised:
        store.gc(grace_s=0, now=now)
    assert (raised.value.run, raised.value.epoch) == ("r", 0)
    assert has_blob(store, orphan)


def test_a_malformed_record_stops_gc_but_not_saves(store_url):
    store = open_store(store_url)
    store.location.write_exclusive(f"{GC_PREFIX}/pending-{0:016d}-deadbeef.json", b"{")
    with pytest.raises(castore.IntegrityError, match=r"record .* is unreadable"):
        store.gc(grace_s=0)
    store.run("r").save({"w": torch.ones(2)}, epoch=0)
    assert store.blobs.pending_deletions() == frozenset()


def test_negative_grace_is_refused(store_url):
    with pytest.raises(castore.InvalidCheckpointError, match="grace_s"):
        open_store(store_url).gc(grace_s=-1)


def test_forgotten_checkpoints_free_only_blobs_nothing_else_needs(store_url):
    store = open_store(store_url)
    run = store.run("r")
    frozen = torch.arange(4096.0)
    heads = [torch.randn(4096, generator=torch.Generator().manual_seed(e)) for e in range(4)]
    for epoch in range(4):  # unrelated heads: full frames, no delta chain between them
        run.save({"frozen": frozen, "head": heads[epoch]}, epoch=epoch)
    other = store.run("other")
    other.save({"head": heads[1]}, epoch=0)  # shares epoch 1's head
    needed = run.record(3).digests() | other.record(0).digests()
    forgotten = set().union(*(run.record(e).digests() for e in range(3))) - needed
    assert run.retain(keep_last=1).forgotten == (0, 1, 2)
    now = time.time() + LATER
    store.gc(grace_s=0, now=now)
    report = store.gc(grace_s=0, now=now)
    assert report.deleted_blobs == len(forgotten) > 0
    assert set(store.blobs.listing()) == needed
    assert store.verify().ok
    assert torch.equal(other.load(0)["head"], heads[1])
    assert torch.equal(run.load(3)["frozen"], frozen)


@given(now=st.floats(min_value=1e9, max_value=4e9), grace=st.sampled_from([0.0, 1.0, 3600.0]))
def test_a_record_stamped_now_is_due_exactly_grace_later(now, grace):
    record = PendingRecord("gc/pending", int(now * 1_000_000), ())
    assert record.is_older_than(grace, now_s=now + grace)
    assert not record.is_older_than(grace, now_s=now + grace - 0.001)
