"""Delta frames: keyframe-based, depth one, recorded in the manifest, bit-exact."""

from __future__ import annotations

import uuid

import torch

import castore
from castore.blobstore.layout import blob_key
from castore.codec import FilterFlags, unpack_header

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


def frame_header(store: castore.Store, digest: str):
    return unpack_header(store.location.read(blob_key(digest)))


def test_changed_chunks_are_deltas_on_keyframes_and_load_exactly():
    store = open_store(f"memory://{uuid.uuid4().hex}")
    run = store.run("r")
    states = drifting_states(5)
    infos = [run.save(state, epoch=epoch) for epoch, state in enumerate(states)]

    keyframes = {c.digest for c in run.record(0).tensors[0].chunks}
    for epoch in range(1, 5):
        chunks = run.record(epoch).tensors[0].chunks
        assert [c.base for c in chunks] == [c.digest for c in run.record(0).tensors[0].chunks]
        for chunk in chunks:
            header = frame_header(store, chunk.digest)
            assert header.filters & FilterFlags.XOR_DELTA
            assert header.base_digest == chunk.base
            assert chunk.base in keyframes
            assert frame_header(store, chunk.base).base_digest is None  # depth one
        assert infos[epoch].stored_bytes < 0.75 * infos[0].stored_bytes
    for epoch, state in enumerate(states):
        loaded = castore.open(store.url).run("r").load(epoch)
        assert torch.equal(loaded["w"], state["w"])
        assert torch.equal(loaded["b"], state["b"])


def test_delta_off_and_raw_codec_store_whole_frames():
    for codec in (castore.CodecOptions(delta=False), castore.CodecOptions(codec="raw")):
        run = open_store(f"memory://{uuid.uuid4().hex}", codec=codec).run("r")
        for epoch, state in enumerate(drifting_states(3)):
            run.save(state, epoch=epoch)
        assert all(c.base is None for t in run.record(2).tensors for c in t.chunks)


def test_unrelated_new_values_become_the_next_keyframe():
    run = open_store(f"memory://{uuid.uuid4().hex}").run("r")
    torch.manual_seed(1)
    run.save({"w": torch.randn(16 * 1024)}, epoch=0)
    run.save({"w": torch.randn(16 * 1024)}, epoch=1)
    assert all(c.base is None for c in run.record(1).tensors[0].chunks)


def test_base_of_a_blob_written_by_another_run_is_read_from_its_frame():
    store = open_store(f"memory://{uuid.uuid4().hex}")
    states = drifting_states(2)
    store.run("a").save(states[0], epoch=0)
    store.run("a").save(states[1], epoch=1)
    info = store.run("b").save(states[1], epoch=0)
    assert info.blobs_written == 0
    assert [c.base for c in store.run("b").record(0).tensors[0].chunks] == [
        c.base for c in store.run("a").record(1).tensors[0].chunks
    ]
    assert all(c.base is not None for c in store.run("b").record(0).tensors[0].chunks)
    assert torch.equal(store.run("b").load(0)["w"], states[1]["w"])


def test_packs_split_by_large_tensors_still_find_their_keyframe():
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
