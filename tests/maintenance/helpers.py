"""Helpers for the maintenance tests: put blobs and damage them through the Location API."""

from __future__ import annotations

import time

import torch

import castore
from castore.blobstore.layout import blob_key
from castore.codec.frame import encode_frame
from castore.codec.hashing import hash_bytes

SMALL_CHUNKS = castore.ChunkingOptions(chunk_bytes=16 * 1024, pack_below_bytes=4 * 1024)
LATER = 10.0  # seconds after every write so far: blobs count as older than a grace of 0


def open_store(url: str, **options) -> castore.Store:
    options.setdefault("chunking", SMALL_CHUNKS)
    return castore.open(url, **options)


def put_orphan(store: castore.Store, payload: bytes) -> str:
    """A blob no checkpoint references, as a killed save leaves behind."""
    digest = hash_bytes(payload)
    store.blobs.put(digest, [encode_frame(payload)])
    return digest


def has_blob(store: castore.Store, digest: str) -> bool:
    return store.location.exists(blob_key(digest))


def flip_last_byte(store: castore.Store, digest: str) -> None:
    key = blob_key(digest)
    frame = bytearray(store.location.read(key))
    frame[-1] ^= 0xFF
    store.location.write(key, [bytes(frame)])


def forget_one_chunk(store: castore.Store) -> tuple[torch.Tensor, float]:
    """Save a tensor of one 16 KiB chunk as epoch 0 of run "r", forget it, and let a gc
    pass record its blob as a candidate; return the tensor and the pass's clock."""
    w = torch.randn(4096)
    store.run("r").save({"w": w}, epoch=0)
    store.run("r").delete(0)
    now = time.time() + LATER
    assert store.gc(grace_s=0, now=now).pending_blobs == 1
    return w, now
