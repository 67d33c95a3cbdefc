"""Packs by unit on save: a frozen block's small tensors dedup against the run they came
from, mixed-width packs keep byte planes, and stores written with packs filled in order
still load and go on saving."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import torch

import castore
from castore.blobstore.layout import blob_key
from castore.codec import unpack_header

if TYPE_CHECKING:
    from castore.manifest.records import CheckpointRecord

KiB = 1024
# Blocks' small tensors: 27 KiB per block, so at 16 KiB a pack closes at each block.
CHUNKS = castore.ChunkingOptions(
    chunk_bytes=64 * KiB, pack_below_bytes=32 * KiB, pack_split_bytes=16 * KiB
)
IN_ORDER = castore.ChunkingOptions(
    chunk_bytes=64 * KiB, pack_below_bytes=32 * KiB, pack_split_bytes=64 * KiB
)


def model(seed: int, blocks: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {}
    for i in range(blocks):
        state[f"blocks.{i}.norm.weight"] = 1 + 0.01 * torch.randn(1024)
        state[f"blocks.{i}.fc.weight"] = 0.02 * torch.randn(20 * 256)  # 20 KiB
        state[f"blocks.{i}.fc.bias"] = 0.01 * torch.randn(768)
    state["head.weight"] = 0.02 * torch.randn(64 * 1024)  # 256 KiB: chunked
    return state


def train_last_block(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    tuned = {name: tensor.clone() for name, tensor in state.items()}
    last = max(int(name.split(".")[1]) for name in state if name.startswith("blocks."))
    for name, tensor in tuned.items():
        if name.startswith((f"blocks.{last}.", "head.")):
            tensor.mul_(1 + 1e-4 * torch.randn_like(tensor))
    return tuned


def blob_digests(record: CheckpointRecord) -> set[str]:
    return {chunk.digest for ref in record.tensors for chunk in ref.chunks}


def test_a_fine_tune_writes_only_its_trained_block_and_head():
    store = castore.open(f"memory://{uuid.uuid4().hex}", chunking=CHUNKS)
    base = model(0)
    store.run("pretrain").save(base, epoch=0)
    tuned = train_last_block(base, 1)
    info = store.run("finetune").save(tuned, epoch=0)

    record = store.run("finetune").record(0)
    packs = {}
    for ref in record.tensors:
        for chunk in ref.chunks:
            if chunk.length != chunk.blob_length:
                packs.setdefault(chunk.digest, []).append(ref.name.split(".")[1])
    # One pack per block (3 tensors, 27 KiB), never two blocks in one.
    assert sorted(packs.values()) == [["0"] * 3, ["1"] * 3, ["2"] * 3, ["3"] * 3]
    # Blocks 0-2 dedup against the pre-training; block 3's pack and the head's four
    # chunks are new.
    assert info.blobs_written == 5
    assert info.blobs_skipped == 3
    assert info.new_bytes == 27 * KiB + 256 * KiB
    loaded = store.run("finetune").load(0)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tuned.items())


def test_packs_filled_in_order_mix_a_frozen_block_with_the_trained_one():
    # The same fine-tune with packs filled in order (the plan before units): block 2's
    # fc (23 KiB) shares a pack with block 3, which trained, so it is written again.
    store = castore.open(f"memory://{uuid.uuid4().hex}", chunking=IN_ORDER)
    base = model(0)
    store.run("pretrain").save(base, epoch=0)
    info = store.run("finetune").save(train_last_block(base, 1), epoch=0)
    assert info.new_bytes == 23 * KiB + 27 * KiB + 256 * KiB


def test_a_float32_pack_with_an_int64_counter_keeps_four_byte_planes():
    torch.manual_seed(0)
    state = {
        "bn.weight": 1 + 0.01 * torch.randn(2048),
        "bn.bias": 0.01 * torch.randn(2048),
        "bn.num_batches_tracked": torch.tensor(12345, dtype=torch.int64),
        "bn.running_mean": 0.1 * torch.randn(2048),
    }
    sizes = {}
    for name in ("planes", "bytes"):
        store = castore.open(f"memory://{uuid.uuid4().hex}", chunking=CHUNKS)
        run = store.run("r")
        if name == "bytes":  # the same bytes as one uint8 tensor: no byte planes
            flat = torch.cat([t.reshape(-1).view(torch.uint8) for t in state.values()])
            info = run.save({"bn.flat": flat}, epoch=0)
        else:
            info = run.save(state, epoch=0)
            (digest,) = blob_digests(run.record(0))
            header = unpack_header(store.location.read(blob_key(digest)))
            assert header.element_size == 4
            loaded = run.load(0)
            assert all(torch.equal(loaded[k], v) for k, v in state.items())
        sizes[name] = info.stored_bytes
    assert info.blobs_written == 1
    assert sizes["planes"] < 0.9 * sizes["bytes"]


def test_a_run_saved_with_packs_in_order_goes_on_with_packs_by_unit():
    url = f"memory://{uuid.uuid4().hex}"
    states = [model(0)]
    for seed in (1, 2):
        states.append(train_last_block(states[-1], seed))
    castore.open(url, chunking=IN_ORDER).run("r").save(states[0], epoch=0)
    run = castore.open(url, chunking=CHUNKS).run("r")
    first = run.save(states[1], epoch=1)
    second = run.save(states[2], epoch=2)

    # The plan changed: four packs (one per block) replace two, new blobs written whole
    # (no pack of the old plan is at their position), and the trained head's four chunks.
    assert blob_digests(run.record(0)).isdisjoint(blob_digests(run.record(1)))
    assert first.blobs_written == 4 + 4
    packs = [c for ref in run.record(1).tensors for c in ref.chunks if c.length < c.blob_length]
    assert len({c.digest for c in packs}) == 4
    assert all(chunk.base is None for chunk in packs)
    # From then on blocks 0-2 dedup and the trained block's pack is a delta on the
    # previous checkpoint's.
    assert second.blobs_written == 1 + 4

    def block_3(epoch: int) -> set[tuple[str, str | None]]:
        return {
            (chunk.digest, chunk.base)
            for ref in run.record(epoch).tensors
            if ref.name.startswith("blocks.3.")
            for chunk in ref.chunks
        }

    ((pack_1, _),) = block_3(1)
    ((_, base_2),) = block_3(2)
    assert base_2 == pack_1
    for epoch, state in enumerate(states):
        loaded = castore.open(url).run("r").load(epoch)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
