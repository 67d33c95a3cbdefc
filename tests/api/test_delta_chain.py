"""Delta chains: each changed chunk a delta on the previous checkpoint's, the chain
bounded by ``max_chain``, recorded whole in the manifest, bit-exact, kept whole by gc."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import torch

import castore
from castore.blobstore.digest import Digest
from castore.blobstore.layout import blob_key
from castore.codec import unpack_header
from castore.codec.frame import encode_frame_parts
from castore.errors import IntegrityError
from castore.snapshot.fetch import MAX_DECODE_DEPTH, fetch_into
from tests.spies import record_digests

CHUNKS = castore.ChunkingOptions(chunk_bytes=64 * 1024, pack_below_bytes=16 * 1024)


def open_store(url: str, **options) -> castore.Store:
    return castore.open(url, chunking=CHUNKS, **options)


def drifting_states(n: int) -> list[dict[str, torch.Tensor]]:
    """Weights that drift slowly, as training moves them: a delta stores far less."""
    torch.manual_seed(0)
    weight = torch.randn(4, 16 * 1024)
    states = []
    for _ in range(n):
        weight = weight + 1e-4 * torch.randn_like(weight)
        states.append({"w": weight.clone(), "b": torch.randn(8)})
    return states


def frame_base(store: castore.Store, digest: str) -> str | None:
    return unpack_header(store.location.read(blob_key(digest))).base_digest


def test_each_delta_is_on_the_previous_checkpoint_and_chains_are_bounded():
    store = open_store(f"memory://{uuid.uuid4().hex}", codec=castore.CodecOptions(max_chain=3))
    run = store.run("r")
    states = drifting_states(9)
    infos = [run.save(state, epoch=epoch) for epoch, state in enumerate(states)]

    root = run.record(0).tensors[0].chunks
    for epoch in range(9):
        chunks = run.record(epoch).tensors[0].chunks
        depth = 0 if epoch == 0 else (epoch - 1) % 3 + 1  # 0, then 1 2 3, 1 2 3, ...
        assert [len(c.lineage) for c in chunks] == [depth] * len(chunks)
        if depth > 1:
            previous = run.record(epoch - 1).tensors[0].chunks
            assert [c.base for c in chunks] == [c.digest for c in previous]
            assert [c.ancestors for c in chunks] == [p.lineage for p in previous]
        if depth == 1:  # a new chain, on the full frame at the root of the last one
            assert [c.base for c in chunks] == [c.digest for c in root]
        if depth:
            assert infos[epoch].stored_bytes < 0.75 * infos[0].stored_bytes
        for chunk in chunks:
            chain = (chunk.digest, *chunk.lineage)
            assert [frame_base(store, d) for d in chain] == [*chunk.lineage, None]
    for epoch, state in enumerate(states):
        loaded = castore.open(store.url).run("r").load(epoch)
        assert torch.equal(loaded["w"], state["w"])
        assert torch.equal(loaded["b"], state["b"])


def test_max_chain_one_bases_every_delta_on_the_root():
    run = open_store(f"memory://{uuid.uuid4().hex}", codec=castore.CodecOptions(max_chain=1)).run(
        "r"
    )
    for epoch, state in enumerate(drifting_states(4)):
        run.save(state, epoch=epoch)
    root = run.record(0).tensors[0].chunks[0].digest
    assert [run.record(e).tensors[0].chunks[0].lineage for e in range(4)] == [
        (),
        (root,),
        (root,),
        (root,),
    ]


@pytest.mark.parametrize("max_chain", [0, 17, 2.0])
def test_max_chain_out_of_range_is_refused(max_chain):
    with pytest.raises(ValueError, match="max_chain"):
        castore.CodecOptions(max_chain=max_chain)


def test_delta_off_and_raw_codec_store_whole_frames():
    for codec in (castore.CodecOptions(delta=False), castore.CodecOptions(codec="raw")):
        run = open_store(f"memory://{uuid.uuid4().hex}", codec=codec).run("r")
        for epoch, state in enumerate(drifting_states(3)):
            run.save(state, epoch=epoch)
        assert all(c.base is None for t in run.record(2).tensors for c in t.chunks)


def test_unrelated_new_values_start_a_new_chain():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    torch.manual_seed(1)
    run.save({"w": torch.randn(16 * 1024)}, epoch=0)
    run.save({"w": torch.randn(16 * 1024)}, epoch=1)
    assert all(c.base is None for c in run.record(1).tensors[0].chunks)


def test_lineage_of_a_blob_written_by_another_run_is_read_from_its_frames():
    store = open_store(f"memory://{uuid.uuid4().hex}")
    states = drifting_states(3)
    for epoch, state in enumerate(states):
        store.run("a").save(state, epoch=epoch)
    info = store.run("b").save(states[2], epoch=0)
    assert info.blobs_written == 0
    lineages = [c.lineage for c in store.run("b").record(0).tensors[0].chunks]
    assert lineages == [c.lineage for c in store.run("a").record(2).tensors[0].chunks]
    assert all(len(lineage) == 2 for lineage in lineages)
    assert torch.equal(store.run("b").load(0)["w"], states[2]["w"])


def test_gc_keeps_a_chain_whole_after_the_checkpoints_between_are_forgotten(tmp_path):
    store = open_store(str(tmp_path / "store"))
    run = store.run("r")
    states = drifting_states(4)
    for epoch, state in enumerate(states):
        run.save(state, epoch=epoch)
    chain = run.record(3).tensors[0].chunks[0]
    assert len(chain.lineage) == 3
    for epoch in (0, 1, 2):
        run.delete(epoch)
    now = time.time() + 10
    store.gc(grace_s=0, now=now)
    report = store.gc(grace_s=0, now=now)
    assert report.deleted_blobs > 0  # the forgotten epochs' small tensor "b" went
    for digest in (chain.digest, *chain.lineage):
        assert store.location.exists(blob_key(digest))
    fresh = castore.open(store.url).run("r").load(3)
    assert torch.equal(fresh["w"], states[3]["w"])
    assert store.verify().ok


def test_a_looping_chain_is_refused_not_followed_forever():
    store = open_store(f"memory://{uuid.uuid4().hex}")
    data = np.zeros(64, np.uint8)
    first, second = Digest("a" * 64), Digest("b" * 64)
    for digest, base in ((first, second), (second, first)):
        store.blobs.put(
            digest,
            encode_frame_parts(
                data, element_size=1, base=data, base_digest=base, options=castore.CodecOptions()
            ),
        )
    with pytest.raises(IntegrityError, match=f"longer than {MAX_DECODE_DEPTH} frames"):
        fetch_into(store.blobs, first, np.empty(64, np.uint8))


def test_packs_split_by_large_tensors_still_find_their_base():
    """Manifest order interleaves a pack's pieces with large tensors' chunks."""
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    torch.manual_seed(2)
    state = {
        "small0": torch.randn(1024),
        "big": torch.randn(32 * 1024),
        "small1": torch.randn(1024),
    }
    run.save(state, epoch=0)
    drifted = {name: tensor + 1e-4 * torch.randn_like(tensor) for name, tensor in state.items()}
    run.save(drifted, epoch=1)
    pack = run.record(1).tensors[0].chunks[0]
    assert pack.blob_length == 2 * 4096
    assert pack.base == run.record(0).tensors[0].chunks[0].digest
    loaded = run.load(1)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in drifted.items())


def count_base_fetches(monkeypatch) -> list[str]:
    import castore.api.deltas as deltas

    return record_digests(monkeypatch, deltas, "fetch_into")


@pytest.mark.parametrize("budget", [0, 65 * 1024, 512 * 1024 * 1024])
def test_later_saves_take_their_bases_from_memory_within_the_budget(monkeypatch, budget):
    fetched = count_base_fetches(monkeypatch)
    codec = castore.CodecOptions(base_cache_bytes=budget)
    url = f"memory://{uuid.uuid4().hex}"
    run = open_store(url, codec=codec).run("r")
    states = drifting_states(4)
    per_save = []
    for epoch, state in enumerate(states):
        before = len(fetched)
        run.save(state, epoch=epoch)
        per_save.append(len(fetched) - before)
    chunks = len(run.record(0).digests())  # "w" in 4 chunks of 64 KiB, "b" in a small pack
    assert chunks == 5
    # The first save keeps nothing (it may be the last); its chunks are read back once.
    assert per_save[:2] == [0, chunks]
    expected = {0: chunks, 65 * 1024: chunks - 2, 512 * 1024 * 1024: 0}[budget]
    assert per_save[2:] == [expected, expected]

    plain = open_store(f"memory://{uuid.uuid4().hex}", codec=castore.CodecOptions()).run("r")
    for epoch, state in enumerate(states):
        plain.save(state, epoch=epoch)
    for epoch, state in enumerate(states):
        assert run.record(epoch).digests() == plain.record(epoch).digests()
        assert torch.equal(castore.open(url).run("r").load(epoch)["w"], state["w"])


def test_base_cache_bytes_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="base_cache_bytes"):
        castore.CodecOptions(base_cache_bytes=-1)


def test_a_corrupt_frame_inside_a_chain_is_named_by_the_load(tmp_path):
    store = open_store(str(tmp_path / "store"))
    run = store.run("r")
    for epoch, state in enumerate(drifting_states(3)):
        run.save(state, epoch=epoch)
    chunk = run.record(2).tensors[0].chunks[0]
    middle = chunk.lineage[0]
    key = blob_key(middle)
    frame = bytearray(store.location.read(key))
    frame[-1] ^= 0xFF
    store.location.write(key, [bytes(frame)])
    with pytest.raises(IntegrityError) as info:
        castore.open(store.url).run("r").load(2)
    assert info.value.digest == middle


def test_runs_of_one_store_share_one_base_budget(monkeypatch):
    fetched = count_base_fetches(monkeypatch)
    codec = castore.CodecOptions(base_cache_bytes=300 * 1024)  # one run's chunks, not two
    store = open_store(f"memory://{uuid.uuid4().hex}", codec=codec)
    states = {
        "a": drifting_states(3),
        "b": [{k: -v for k, v in s.items()} for s in drifting_states(3)],
    }
    for epoch in (0, 1):
        for name in ("a", "b"):  # b saves last, so a's kept bases go
            store.run(name).save(states[name][epoch], epoch=epoch)
    before = len(fetched)
    store.run("b").save(states["b"][2], epoch=2)
    assert len(fetched) == before  # b's bases were kept
    store.run("a").save(states["a"][2], epoch=2)
    assert len(fetched) - before == 5  # a's were dropped: 4 chunks of "w" and the pack
