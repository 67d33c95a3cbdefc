"""Checkpoint behaviour every backend must show identically.

Effects are checked through the raw filesystem (``backend.raw_fs``) as well as castore.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch

import castore
import castore.api.save as save_module
from castore.blobstore.layout import STORE_CONFIG_KEY, blob_key, part_key
from castore.blobstore.store import BlobStore

SMALL_CHUNKS = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)


def open_store(backend, **options):
    options.setdefault("chunking", SMALL_CHUNKS)
    return castore.open(backend.url, **options, **backend.storage_options)


def raw_blobs(backend) -> dict[str, int]:
    root = backend.raw_path("blobs")
    if not backend.raw_fs.exists(root):
        return {}
    backend.raw_fs.invalidate_cache()
    found = backend.raw_fs.find(root, detail=True)
    return {path.rsplit("/", 1)[-1]: info["size"] for path, info in found.items()}


def raw_parts(backend, run: str) -> list[str]:
    prefix = backend.raw_path(f"runs/{run}/manifest")
    backend.raw_fs.invalidate_cache()
    if not backend.raw_fs.exists(prefix):
        return []
    return sorted(p.rsplit("/", 1)[-1] for p in backend.raw_fs.ls(prefix, detail=False))


def trained_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(16, 32)).pow(2).mean().backward()
        opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype
        assert actual[key].shape == value.shape
        assert torch.equal(actual[key], value), key


def test_store_config_is_written_once(backend):
    open_store(backend)
    raw = json.loads(backend.raw_fs.cat_file(backend.raw_path(STORE_CONFIG_KEY)))
    assert raw["format"] == "castore"
    assert raw["format_version"] == 1
    assert raw["hash"] == "blake3-256"
    open_store(backend)
    assert json.loads(backend.raw_fs.cat_file(backend.raw_path(STORE_CONFIG_KEY))) == raw


def test_newer_store_format_is_refused(backend):
    open_store(backend)
    config = {"format": "castore", "format_version": 99, "hash": "blake3-256"}
    backend.raw_fs.pipe_file(backend.raw_path(STORE_CONFIG_KEY), json.dumps(config).encode())
    with pytest.raises(castore.FormatError, match="version 99 is newer"):
        open_store(backend)


def test_open_without_create_on_empty_location(backend):
    with pytest.raises(castore.NotFoundError, match="no castore store"):
        open_store(backend, create=False)
    assert not backend.raw_fs.exists(backend.raw_path(STORE_CONFIG_KEY))


def test_save_load_round_trip_restores_training_state(backend):
    store = open_store(backend)
    state = trained_state()
    info = store.run("ppo").save(state, epoch=3, step=300, metrics={"score": 0.5})
    assert info.epoch == 3
    assert info.blobs_written == len(raw_blobs(backend)) > 0
    assert raw_parts(backend, "ppo") == ["0000000003.parquet"]

    loaded = open_store(backend).run("ppo").load()
    assert loaded["epoch"] == 3
    assert type(loaded["model"]) is type(state["model"])
    assert_same_tensors(state["model"], loaded["model"])
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    for key, per_param in state["optimizer"]["state"].items():
        assert_same_tensors(per_param, loaded["optimizer"]["state"][key])

    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 4))
    model.load_state_dict(loaded["model"])
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(loaded["optimizer"])


def test_unchanged_resave_writes_no_blob(backend):
    store = open_store(backend)
    state = trained_state()
    first = store.run("r").save(state, epoch=0)
    before = raw_blobs(backend)
    second = store.run("r").save(state, epoch=1)
    assert second.blobs_written == 0
    assert second.new_bytes == second.stored_bytes == 0
    assert second.blobs_skipped == first.blobs_written
    assert second.logical_bytes == first.logical_bytes
    assert raw_blobs(backend) == before
    assert raw_parts(backend, "r") == ["0000000000.parquet", "0000000001.parquet"]


def test_changing_one_element_writes_only_its_chunk(backend):
    store = open_store(backend)
    big = torch.randn(4, 64 * 1024 // 4)  # four 64 KiB chunks
    small = {f"b{i}": torch.randn(16) for i in range(20)}  # one pack
    store.run("r").save({"big": big, **small}, epoch=0)
    before = raw_blobs(backend)
    assert len(before) == 5

    changed = big.clone()
    changed[2, 7] += 1.0
    info = store.run("r").save({"big": changed, **small}, epoch=1)
    assert info.blobs_written == 1
    assert info.new_bytes == 64 * 1024
    after = raw_blobs(backend)
    assert len(after) == 6
    assert set(before) < set(after)
    assert torch.equal(store.run("r").load(1)["big"], changed)
    assert torch.equal(store.run("r").load(0)["big"], big)


def test_two_runs_share_blobs(backend):
    store = open_store(backend)
    state = trained_state()
    store.run("a").save(state, epoch=0)
    blobs = raw_blobs(backend)
    info = store.run("b").save(state, epoch=5)
    assert info.blobs_written == 0
    assert raw_blobs(backend) == blobs
    assert store.runs() == ["a", "b"]


def test_small_tensors_are_packed_into_few_blobs(backend):
    store = open_store(backend, chunking=castore.ChunkingOptions())
    state = {f"layer{i}.bias": torch.randn(64) for i in range(300)}
    info = store.run("r").save(state, epoch=0)
    assert info.blobs_written == 1
    assert len(raw_blobs(backend)) == 1
    loaded = store.run("r").load()
    assert_same_tensors(state, loaded)


def test_existing_epoch_is_a_conflict_and_changes_nothing(backend):
    store = open_store(backend)
    store.run("r").save({"w": torch.ones(3)}, epoch=7)
    part = backend.raw_fs.cat_file(backend.raw_path(part_key("r", 7)))
    blobs = raw_blobs(backend)
    with pytest.raises(castore.ConflictError, match="already committed") as caught:
        store.run("r").save({"w": torch.zeros(3)}, epoch=7)
    assert isinstance(caught.value, FileExistsError)
    assert caught.value.run == "r"
    assert caught.value.epoch == 7
    assert backend.raw_fs.cat_file(backend.raw_path(part_key("r", 7))) == part
    assert raw_blobs(backend) == blobs
    assert torch.equal(store.run("r").load(7)["w"], torch.ones(3))


def test_crash_between_blobs_and_part_leaves_no_checkpoint(backend, monkeypatch):
    store = open_store(backend)
    state = {"big": torch.randn(64 * 1024), "small": torch.randn(8)}
    original_put = BlobStore.put
    calls = []

    def failing_put(self, digest, frame):
        calls.append(digest)
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        original_put(self, digest, frame)

    monkeypatch.setattr(BlobStore, "put", failing_put)
    with pytest.raises(RuntimeError, match="injected crash"):
        store.run("r").save(state, epoch=0)
    assert store.run("r").epochs() == []
    assert raw_parts(backend, "r") == []
    assert store.runs() == []

    monkeypatch.setattr(BlobStore, "put", original_put)
    info = store.run("r").save(state, epoch=0)
    assert info.blobs_written + info.blobs_skipped == 5
    assert_same_tensors(state, store.run("r").load(0))


def test_flipped_byte_raises_integrity_error_naming_the_tensor(backend):
    store = open_store(backend, codec=castore.CodecOptions(codec="raw"))
    store.run("r").save({"model": {"fc.weight": torch.randn(256)}}, epoch=0)
    (digest,) = raw_blobs(backend)
    path = backend.raw_path(blob_key(digest))
    frame = bytearray(backend.raw_fs.cat_file(path))
    frame[-5] ^= 0x01
    backend.raw_fs.pipe_file(path, bytes(frame))

    uncached = castore.CacheOptions(enabled=False)
    with pytest.raises(castore.IntegrityError, match="the stored frame is corrupt") as caught:
        open_store(backend, cache=uncached).run("r").load(0)
    assert caught.value.tensor == "model.fc.weight"
    assert caught.value.digest == digest
    assert caught.value.run == "r"
    assert caught.value.epoch == 0


def test_missing_blob_raises_blob_not_found(backend):
    store = open_store(backend)
    store.run("r").save({"w": torch.randn(100)}, epoch=0)
    (digest,) = raw_blobs(backend)
    backend.raw_fs.rm_file(backend.raw_path(blob_key(digest)))
    with pytest.raises(castore.BlobNotFoundError) as caught:
        open_store(backend, cache=castore.CacheOptions(enabled=False)).run("r").load(0)
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.digest == digest
    assert caught.value.tensor == "w"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda run: run.save({"w": torch.ones(1)}, epoch=-1), "epoch must be within"),
        (lambda run: run.save({"w": torch.ones(1)}, epoch=True), "epoch must be an int"),
        (lambda run: run.save({"w": torch.ones(1)}, epoch=1.0), "epoch must be an int"),
        (lambda run: run.save({"w": object()}, epoch=0), "cannot store a builtins.object at 'w'"),
        (lambda run: run.save({"w": torch.ones(1)}, epoch=0, step=-3), "step must be"),
        (lambda run: run.save({"w": torch.ones(1)}, epoch=0, metrics={"epoch": 1.0}), "reserved"),
        (
            lambda run: run.save({"w": torch.ones(1)}, epoch=0, metrics={"a b": 1.0}),
            "invalid metric",
        ),
        (lambda run: run.save({"w": torch.ones(1)}, epoch=0, metrics={"s": "high"}), "real number"),
        (lambda run: run.save({"w": torch.ones(2).to_sparse()}, epoch=0), "to_dense"),
        (lambda run: run.save({"w": torch.empty(2, device="meta")}, epoch=0), "meta tensors"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(backend, call, message):
    store = open_store(backend)
    with pytest.raises(castore.InvalidCheckpointError, match=message):
        call(store.run("r"))
    assert raw_blobs(backend) == {}
    assert raw_parts(backend, "r") == []


@pytest.mark.parametrize("name", ["", "..", "a/b", "a b", ".hidden", "x" * 129, "a..b"])
def test_bad_run_names_are_refused(backend, name):
    store = open_store(backend)
    with pytest.raises(castore.InvalidCheckpointError, match="invalid run name"):
        store.run(name)


def test_selection_by_epoch_latest_and_best(backend):
    store = open_store(backend)
    run = store.run("r")
    assert run.latest() is None
    with pytest.raises(castore.NotFoundError, match="has no checkpoints"):
        run.load()
    scores = {0: 0.1, 10: 0.9, 20: 0.5, 30: 0.9}
    losses = {0: 3.0, 10: 1.0, 20: 0.5, 30: 2.0}
    for epoch, score in scores.items():
        run.save(
            {"e": torch.tensor(epoch)},
            epoch=epoch,
            step=epoch * 100,
            metrics={"score": score, "loss": losses[epoch]},
        )
    assert run.epochs() == [0, 10, 20, 30]
    assert run.latest() == 30
    assert run.load()["e"].item() == 30
    assert run.load(epoch=20)["e"].item() == 20
    assert run.load(best="score")["e"].item() == 10
    assert run.load(best="-loss")["e"].item() == 20
    with pytest.raises(castore.NotFoundError, match="metric 'reward'"):
        run.load(best="reward")
    with pytest.raises(castore.NotFoundError, match="no checkpoint at epoch 5"):
        run.load(epoch=5)

    table = run.checkpoints()
    assert table["epoch"].tolist() == [0, 10, 20, 30]
    assert table["step"].tolist() == [0, 1000, 2000, 3000]
    assert table["score"].tolist() == [0.1, 0.9, 0.5, 0.9]


def test_query_across_runs(backend):
    store = open_store(backend)
    store.run("a").save({"w": torch.ones(4)}, epoch=1, metrics={"score": 0.3})
    store.run("b").save({"w": torch.ones(4)}, epoch=2, metrics={"score": 0.8, "avg_reward": 1.5})
    frame = store.query("SELECT run, epoch, score, avg_reward FROM checkpoints ORDER BY score DESC")
    assert frame["run"].tolist() == ["b", "a"]
    assert frame["epoch"].tolist() == [2, 1]
    assert frame["avg_reward"].isna().tolist() == [False, True]
    with pytest.raises(castore.QueryError, match="query failed"):
        store.query("SELECT nope FROM checkpoints")


def test_du_counts_the_blobs_on_storage(backend):
    store = open_store(backend)
    state = trained_state()
    store.run("a").save(state, epoch=0)
    store.run("a").save(state, epoch=1)
    usage = store.du()
    blobs = raw_blobs(backend)
    assert usage.runs == 1
    assert usage.checkpoints == 2
    assert usage.blobs == len(blobs)
    assert usage.stored_bytes == sum(blobs.values())
    assert usage.logical_bytes == 2 * store.run("a").record(0).logical_bytes
    assert usage.dedup_ratio > 2.0


def test_racing_writers_of_one_epoch_have_exactly_one_winner(backend, monkeypatch):
    writers = 4
    barrier = threading.Barrier(writers)
    original = save_module.write_part

    def commit_together(location, record):
        barrier.wait(timeout=30)
        return original(location, record)

    monkeypatch.setattr(save_module, "write_part", commit_together)
    outcomes: dict[int, object] = {}

    def write(i: int) -> None:
        store = open_store(backend)
        try:
            outcomes[i] = store.run("r").save({"w": torch.full((1000,), float(i))}, epoch=0)
        except castore.ConflictError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [i for i, outcome in outcomes.items() if isinstance(outcome, castore.SaveInfo)]
    assert len(winners) == 1
    assert sum(isinstance(o, castore.ConflictError) for o in outcomes.values()) == writers - 1
    loaded = open_store(backend).run("r").load(0)
    assert torch.equal(loaded["w"], torch.full((1000,), float(winners[0])))
    assert raw_parts(backend, "r") == ["0000000000.parquet"]
