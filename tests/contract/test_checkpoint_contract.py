"""Checkpoint behaviour every backend must show identically."""

from __future__ import annotations

import torch

import castore
from castore.blobstore.layout import part_key


def test_save_then_load_is_bit_identical(backend):
    store = castore.open(backend.url, **backend.storage_options)
    state = {"w": torch.randn(8, 8), "step": 3}
    store.run("r").save(state, epoch=0)
    loaded = store.run("r").load()
    assert loaded["step"] == 3
    assert torch.equal(loaded["w"], state["w"])
    assert backend.raw_fs.exists(backend.raw_path(part_key("r", 0)))
