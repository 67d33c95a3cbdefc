"""Retention, garbage collection, verify, repair and diff on every backend.

Effects are checked through the raw filesystem (``backend.raw_fs``). Clocks are explicit
(``now=``) and grace periods 0: nothing sleeps.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

import castore
import castore.api.save as save_module
from castore.blobstore.layout import GC_PREFIX, GC_RESCUE_PREFIX, blob_key
from castore.codec.hashing import hash_bytes
from castore.maintenance.gc import plan_gc
from castore.manifest.writer import write_part
from tests.maintenance.helpers import LATER, SMALL_CHUNKS, forget_one_chunk


def open_store(backend, url=None):
    return castore.open(url or backend.url, chunking=SMALL_CHUNKS, **backend.storage_options)


def raw_blobs(backend) -> set[str]:
    backend.raw_fs.invalidate_cache()
    root = backend.raw_path("blobs")
    if not backend.raw_fs.exists(root):
        return set()
    return {path.rsplit("/", 1)[-1] for path in backend.raw_fs.find(root)}


def raw_records(backend) -> list[str]:
    backend.raw_fs.invalidate_cache()
    root = backend.raw_path(GC_PREFIX)
    return sorted(backend.raw_fs.find(root)) if backend.raw_fs.exists(root) else []


def state_for(epoch: int) -> dict:
    torch.manual_seed(epoch)
    return {"frozen": torch.arange(4096.0), "w": torch.randn(4096), "b": torch.randn(5)}


@pytest.fixture
def replica_url(backend):
    """A second store beside the backend's, removed afterwards."""
    yield f"{backend.url}-replica"
    root = f"{backend.root}-replica"
    backend.raw_fs.invalidate_cache()
    if backend.raw_fs.exists(root):
        backend.raw_fs.rm(root, recursive=True)


def test_retention_then_two_gc_passes_free_exactly_the_forgotten_blobs(backend):
    store = open_store(backend)
    run = store.run("r")
    for epoch in range(3):
        run.save(state_for(epoch), epoch=epoch, metrics={"score": [0.2, 0.9, 0.1][epoch]})
    run.annotate(0, {"score": 0.3})
    assert run.retain(keep_last=1, keep_best=1, dry_run=True).forgotten == (0,)
    plan = run.retain(keep_last=1, keep_best=1)
    assert (plan.kept, plan.forgotten) == ((1, 2), (0,))
    needed = run.record(1).digests() | run.record(2).digests()
    before = raw_blobs(backend)
    assert needed < before

    now = time.time() + LATER
    first = store.gc(grace_s=0, now=now)
    assert first.pending_blobs == len(before - needed)
    assert raw_blobs(backend) == before
    (record,) = raw_records(backend)
    body = json.loads(backend.raw_fs.cat_file(record))
    assert body["format"] == "castore-gc-pending"
    assert {key.rsplit("/", 1)[-1] for key, _, _ in body["candidates"]} == before - needed

    second = open_store(backend).gc(grace_s=0, now=now)
    assert second.deleted_blobs == len(before - needed)
    assert raw_blobs(backend) == needed
    assert raw_records(backend) == []
    assert open_store(backend).verify().ok
    assert torch.equal(open_store(backend).run("r").load(1)["w"], state_for(1)["w"])


def test_blobs_of_a_save_committing_between_the_passes_are_kept(backend, monkeypatch):
    store = open_store(backend)
    collector = open_store(backend)
    now = time.time() + LATER
    first = []

    def commit_late(location, record):
        first.append(collector.gc(grace_s=0, now=now))
        return write_part(location, record)

    monkeypatch.setattr(save_module, "write_part", commit_late)
    info = store.run("r").save(state_for(0), epoch=0)
    assert first[0].pending_blobs == info.blobs_written > 0
    second = collector.gc(grace_s=0, now=now)
    assert (second.deleted_blobs, second.kept) == (0, info.blobs_written)
    assert open_store(backend).verify().ok


class RewriteAfterCheck:
    """A Location whose ``stat`` of one key runs ``rewrite`` after answering, so a save
    rewrites that blob between gc's check of its modification time and its delete."""

    def __init__(self, location, key, rewrite):
        self._location, self._key, self._rewrite = location, key, rewrite

    def stat(self, key):
        found = self._location.stat(key)
        if key == self._key:
            self._rewrite()
        return found

    def __getattr__(self, name):
        return getattr(self._location, name)


def test_a_rewrite_between_gcs_check_and_delete_is_restored(backend):
    w, now = forget_one_chunk(open_store(backend))
    collector = open_store(backend)
    plan = plan_gc(collector.blobs, grace_s=0, workers=2, now=now)
    (candidate,) = plan.delete
    saves = []

    def save_again():
        saves.append(open_store(backend).run("r").save({"w": w}, epoch=1))

    racing = RewriteAfterCheck(collector.location, candidate.key, save_again)
    report = plan.execute(racing, workers=2, now=now)

    assert saves[0].blobs_written == 1, "the save wrote the recorded blob again"
    assert (report.deleted_blobs, report.restored) == (1, 1)
    assert raw_blobs(backend) == {candidate.digest}
    assert torch.equal(open_store(backend).run("r").load(1)["w"], w)
    assert open_store(backend).verify().ok
    backend.raw_fs.invalidate_cache()
    assert not backend.raw_fs.exists(backend.raw_path(GC_RESCUE_PREFIX + "/" + candidate.digest))


def test_a_young_rescue_copy_outlives_the_pass_and_an_old_one_goes(backend):
    store = open_store(backend)
    w, now = forget_one_chunk(store)
    info = store.run("r").save({"w": w}, epoch=1)  # rewrites the recorded blob, with a copy
    assert info.blobs_written == 1
    rescue = backend.raw_path(f"{GC_RESCUE_PREFIX}/{hash_bytes(w.numpy().tobytes())}")
    backend.raw_fs.invalidate_cache()
    assert backend.raw_fs.exists(rescue)

    young = store.gc(grace_s=3600, now=now)
    backend.raw_fs.invalidate_cache()
    assert (young.restored, backend.raw_fs.exists(rescue)) == (0, True)
    old = store.gc(grace_s=0, now=now)
    backend.raw_fs.invalidate_cache()
    assert (old.restored, old.deleted_blobs, backend.raw_fs.exists(rescue)) == (0, 0, False)
    assert open_store(backend).verify().ok


def test_verify_names_damage_and_repair_from_a_replica_restores_it(backend, replica_url):
    store = open_store(backend)
    replica = open_store(backend, replica_url)
    for target in (store, replica):
        for epoch in range(2):
            target.run("r").save(state_for(epoch), epoch=epoch)
    w = next(t for t in store.run("r").record(1).tensors if t.name == "w")
    frozen = next(t for t in store.run("r").record(0).tensors if t.name == "frozen")
    lost, flipped = w.chunks[0].digest, frozen.chunks[0].digest
    backend.raw_fs.rm_file(backend.raw_path(blob_key(lost)))
    frame = bytearray(backend.raw_fs.cat_file(backend.raw_path(blob_key(flipped))))
    frame[-1] ^= 0xFF
    backend.raw_fs.pipe_file(backend.raw_path(blob_key(flipped)), bytes(frame))
    backend.raw_fs.invalidate_cache()

    report = open_store(backend).verify()
    found = {(p.digest, p.kind) for p in report.problems}
    assert found == {(lost, "missing"), (flipped, "corrupt")}
    assert report.affected() == {("r", 0): ["frozen"], ("r", 1): ["frozen", "w"]}

    repair = store.repair(report, replica_url, **backend.storage_options)
    assert repair.ok
    assert set(repair.repaired) == {lost, flipped}
    fresh = open_store(backend)
    assert fresh.verify().ok
    assert torch.equal(fresh.run("r").load(1)["w"], state_for(1)["w"])


def test_diff_reads_only_what_changed(backend):
    store = open_store(backend)
    store.run("r").save(state_for(0), epoch=0)
    changed = state_for(0)
    changed["b"][2] += 0.5
    store.run("r").save(changed, epoch=1)
    diff = open_store(backend).diff("r", 0, "r", 1)
    assert [(c.name, c.max_abs_diff) for c in diff.changed] == [("b", 0.5)]
    assert (diff.added, diff.removed, diff.n_unchanged) == ((), (), 2)
