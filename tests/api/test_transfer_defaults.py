"""Thread counts by what bounds the work: the CPUs for local stores, the network else."""

from __future__ import annotations

import os
import uuid

import castore
from castore._config import TransferOptions, local_workers


def test_local_and_memory_stores_get_a_thread_per_cpu_and_one(tmp_path):
    expected = (os.cpu_count() or 1) + 1
    assert local_workers() == expected
    assert castore.open(str(tmp_path)).options.transfer.workers == expected
    assert castore.open(f"memory://{uuid.uuid4().hex}").options.transfer.workers == expected


def test_object_stores_and_explicit_options_keep_their_workers(s3_server, tmp_path):
    remote = castore.open(s3_server.url(uuid.uuid4().hex), **s3_server.storage_options)
    assert remote.options.transfer.workers == TransferOptions().workers
    chosen = castore.open(str(tmp_path), transfer=TransferOptions(workers=7))
    assert chosen.options.transfer.workers == 7
