"""Wrong types at every public entry point: a castore error, and nothing written."""

from __future__ import annotations

import uuid

import fsspec
import pytest
import torch

import castore

CALLS = {
    "open(123)": lambda store, run: castore.open(123),
    "open('')": lambda store, run: castore.open(""),
    "run(None)": lambda store, run: store.run(None),
    "save(epoch=None)": lambda store, run: run.save({"w": torch.ones(1)}, epoch=None),
    "save(step='1')": lambda store, run: run.save({"w": torch.ones(1)}, epoch=3, step="1"),
    "save(metrics=5)": lambda store, run: run.save({"w": torch.ones(1)}, epoch=3, metrics=5),
    "load(epoch='0')": lambda store, run: run.load(epoch="0"),
    "load(best=5)": lambda store, run: run.load(best=5),
    "load(keys=5)": lambda store, run: run.load(keys=5),
    "load(keys=[1])": lambda store, run: run.load(keys=[1]),
    "load(map_location=5)": lambda store, run: run.load(map_location=5),
    "open(1.5)": lambda store, run: run.open(1.5),
    "record('0')": lambda store, run: run.record("0"),
    "best(5)": lambda store, run: run.best(5),
    "annotate('0')": lambda store, run: run.annotate("0", {"s": 1.0}),
    "annotate(0, [1])": lambda store, run: run.annotate(0, [1]),
    "retain(keep_last='3')": lambda store, run: run.retain(keep_last="3"),
    "retain(metric=5)": lambda store, run: run.retain(keep_best=1, metric=5),
    "delete('0')": lambda store, run: run.delete("0"),
    "follow(poll_s='x')": lambda store, run: next(run.follow(poll_s="x")),
    "follow(timeout_s='x')": lambda store, run: next(run.follow(timeout_s="x")),
    "load_into(5)": lambda store, run: run.load_into(5),
    "query(5)": lambda store, run: store.query(5),
    "gc(grace_s='1h')": lambda store, run: store.gc(grace_s="1h"),
    "verify(run=5)": lambda store, run: store.verify(run=5),
    "diff(epoch '0')": lambda store, run: store.diff("r", "0", "r", 0),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_wrong_types_raise_castore_errors_and_write_nothing(call):
    name = f"castore-types-{uuid.uuid4().hex}"
    store = castore.open(f"memory://{name}")
    run = store.run("r")
    run.save({"w": torch.ones(2)}, epoch=0, metrics={"score": 1.0})
    fs = fsspec.filesystem("memory")
    before = {path: fs.cat_file(path) for path in fs.find(f"/{name}")}
    with pytest.raises(castore.CastoreError):
        call(store, run)
    assert {path: fs.cat_file(path) for path in fs.find(f"/{name}")} == before
    fs.rm(f"/{name}", recursive=True)
