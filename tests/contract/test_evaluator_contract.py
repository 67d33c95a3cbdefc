"""Evaluators: follow a run while it is written, annotate scores, nothing lost."""

from __future__ import annotations

import io
import threading
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import castore
from castore.blobstore.layout import annotation_key, annotation_prefix
from tests.spies import record_digests


def open_store(backend):
    return castore.open(backend.url, **backend.storage_options)


def test_annotations_merge_into_metrics_best_and_queries(backend):
    run = open_store(backend).run("r")
    for epoch in range(3):
        run.save({"w": torch.full((4,), float(epoch))}, epoch=epoch, metrics={"loss": 3.0 - epoch})
    run.annotate(0, {"score": 0.9})
    run.annotate(2, {"score": 0.4, "loss": 10.0})

    table = run.checkpoints()
    assert table["score"].tolist()[0] == 0.9
    assert table["score"].isna().tolist() == [False, True, False]
    assert table["loss"].tolist() == [3.0, 2.0, 10.0]
    assert run.best("score") == 0
    assert run.best("-loss") == 1
    assert run.open(2).metrics == {"loss": 10.0, "score": 0.4}
    assert run.record(2).metrics == {"loss": 1.0}
    frame = open_store(backend).query("SELECT epoch, score FROM checkpoints WHERE score > 0.5")
    assert frame["epoch"].tolist() == [0]

    names = backend.raw_fs.ls(backend.raw_path(annotation_prefix("r")), detail=False)
    assert len(names) == 2


def test_later_annotation_wins(backend):
    run = open_store(backend).run("r")
    run.save({"w": torch.ones(2)}, epoch=0, metrics={"score": 0.1})
    run.annotate(0, {"score": 0.2})
    run.annotate(0, {"score": 0.3})
    assert run.open(0).metrics["score"] == 0.3
    assert run.checkpoints()["score"].tolist() == [0.3]


def test_annotate_refuses_unknown_epoch_and_bad_metrics(backend):
    run = open_store(backend).run("r")
    run.save({"w": torch.ones(2)}, epoch=0)
    with pytest.raises(castore.NotFoundError, match="no checkpoint at epoch 4"):
        run.annotate(4, {"score": 1.0})
    with pytest.raises(castore.InvalidCheckpointError, match="reserved"):
        run.annotate(0, {"epoch": 1.0})
    with pytest.raises(castore.InvalidCheckpointError, match="reserved"):
        run.annotate(0, {"checkpoint_created_at": 1.0})
    with pytest.raises(castore.InvalidCheckpointError, match="at least one metric"):
        run.annotate(0, {})
    assert not backend.raw_fs.exists(backend.raw_path(annotation_prefix("r")))


def test_a_score_for_a_forgotten_commit_never_attaches_to_a_later_save(backend):
    trainer = open_store(backend).run("r")
    trainer.save({"w": torch.ones(2)}, epoch=0)
    evaluator = open_store(backend).run("r")
    evaluator.open(0)  # found the checkpoint, then scores it slowly
    trainer.delete(0)
    trainer.save({"w": torch.zeros(2)}, epoch=0, metrics={"score": 0.1})
    evaluator.annotate(0, {"score": 0.9, "old": 1.0})  # lands after forget and re-save

    names = backend.raw_fs.ls(backend.raw_path(annotation_prefix("r")), detail=False)
    assert len(names) == 1, "the late part is there"
    fresh = open_store(backend).run("r")
    assert fresh.open(0).metrics == {"score": 0.1}
    assert fresh.checkpoints()["score"].tolist() == [0.1]
    assert "old" not in fresh.checkpoints().columns
    fresh.annotate(0, {"score": 0.5})
    assert open_store(backend).run("r").open(0).metrics == {"score": 0.5}


def test_version_one_metrics_parts_apply_and_newer_ones_are_refused(backend):
    store = open_store(backend)
    store.run("r").save({"w": torch.ones(2)}, epoch=3, metrics={"score": 0.1})
    row = {"run": "r", "epoch": 3, "created_at": datetime.now(UTC), "format_version": 1}
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{**row, "score": 0.8}]), buffer)
    store.location.write_exclusive(annotation_key("r", 3, 1, "0" * 8), buffer.getvalue())
    assert open_store(backend).run("r").open(3).metrics == {"score": 0.8}

    newer = {**row, "format_version": 3, "checkpoint_created_at": row["created_at"]}
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([newer]), buffer)
    store.location.write_exclusive(annotation_key("r", 3, 2, "1" * 8), buffer.getvalue())
    with pytest.raises(
        castore.FormatError, match=r"metrics part .*: format version 3 is newer .* \(2\)"
    ):
        open_store(backend).run("r").checkpoints()


def test_concurrent_annotators_and_trainer_lose_nothing(backend):
    store = open_store(backend)
    run = store.run("r")
    run.save({"w": torch.zeros(8)}, epoch=0)

    def annotate(metric: str) -> None:
        for i in range(5):
            store.run("r").annotate(0, {f"{metric}{i}": float(i)})

    def train() -> None:
        for epoch in range(1, 6):
            store.run("r").save({"w": torch.full((8,), float(epoch))}, epoch=epoch)

    threads = [threading.Thread(target=annotate, args=(m,)) for m in ("a", "b")]
    threads.append(threading.Thread(target=train))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    fresh = open_store(backend).run("r")
    assert fresh.epochs() == [0, 1, 2, 3, 4, 5]
    metrics = fresh.open(0).metrics
    assert metrics == {f"{m}{i}": float(i) for m in ("a", "b") for i in range(5)}


def test_follow_yields_existing_then_new_checkpoints(backend):
    store = open_store(backend)
    run = store.run("r")
    run.save({"w": torch.zeros(2)}, epoch=0)
    run.save({"w": torch.ones(2)}, epoch=1)

    seen = []
    follower = open_store(backend).run("r").follow(poll_s=0.01, timeout_s=0.5)
    for checkpoint in follower:
        seen.append(checkpoint.epoch)
        state = checkpoint.load()
        assert torch.equal(state["w"], torch.full((2,), float(checkpoint.epoch)))
        checkpoint.annotate({"score": float(checkpoint.epoch) / 10})
        if checkpoint.epoch < 3:
            run.save(
                {"w": torch.full((2,), float(checkpoint.epoch + 2))}, epoch=checkpoint.epoch + 2
            )
    assert seen == [0, 1, 2, 3, 4]
    assert run.checkpoints()["score"].tolist() == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_follow_since_skips_older_and_times_out(backend):
    run = open_store(backend).run("r")
    for epoch in (0, 5, 10):
        run.save({"w": torch.zeros(1)}, epoch=epoch)
    assert [c.epoch for c in run.follow(poll_s=0.01, since=5, timeout_s=0.05)] == [10]
    with pytest.raises(castore.InvalidCheckpointError, match="poll_s"):
        next(run.follow(poll_s=0))


def test_following_reads_one_frame_per_new_chunk(backend, monkeypatch):
    """While a run is followed, each load's deltas decode against what the last one
    decoded: every new chunk is one frame read, however deep its chain."""
    store = castore.open(
        backend.url,
        chunking=castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024),
        **backend.storage_options,
    )
    run = store.run("r")
    generator = torch.Generator().manual_seed(0)
    states = [{"w": torch.randn(40_000, generator=generator)}]
    for _ in range(4):
        states.append({"w": states[-1]["w"] + 1e-3 * torch.randn(40_000, generator=generator)})
    for epoch, state in enumerate(states):
        run.save(state, epoch=epoch)
    assert any(c.ancestors for c in run.record(3).tensors[0].chunks)  # chains 3 frames deep

    reads = record_digests(monkeypatch, type(store.blobs), "reader")
    seen: set[str] = set()
    for checkpoint in run.follow(timeout_s=0):
        before = len(reads)
        assert torch.equal(checkpoint.load()["w"], states[checkpoint.epoch]["w"])
        new = {c.digest for c in checkpoint.record.tensors[0].chunks} - seen
        assert sorted(reads[before:]) == sorted(new)
        seen |= new
