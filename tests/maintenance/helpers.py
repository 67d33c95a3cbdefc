"""Helpers for the maintenance tests: put blobs and damage them through the Location API."""

from __future__ import annotations

import castore
from castore.blobstore.layout import blob_key
from castore.codec.frame import encode_frame
from castore.codec.hashing import hash_bytes

SMALL_CHUNKS = castore.ChunkingOptions(chunk_bytes=16 * 1024, pack_below_bytes=4 * 1024)


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
