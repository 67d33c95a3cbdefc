"""Diff: exact sets of added, removed and changed tensors, and the largest difference,
reading only the blobs of tensors whose digests differ."""

from __future__ import annotations

import math

import torch

from castore.maintenance.diff import plan_diff
from tests.maintenance.helpers import open_store


def test_added_removed_changed_and_the_max_abs_difference(store_url, monkeypatch):
    store = open_store(store_url)
    big = torch.arange(8192.0)
    shared = torch.arange(12.0)
    a = {
        "big": big.clone(),
        "frozen": torch.ones(4096),
        "gone": torch.zeros(3),
        "bias": torch.zeros(5),
        "neighbour": torch.ones(5),  # packed with bias: same pack, unchanged values
        "x": shared[:6],
        "y": shared[6:],
        "shape": torch.zeros(4),
        "steps": torch.tensor(3),
    }
    b = dict(a)
    del b["gone"]
    b["new"] = torch.ones(2, 2)
    b["big"] = big.clone()
    b["big"][7] -= 2.5
    b["big"][8000] += 0.25
    b["bias"] = torch.tensor([0.0, 0.0, 1.5, 0.0, 0.0])
    shared_b = shared.clone()
    shared_b[8] = 100.0
    b["x"], b["y"] = shared_b[:6], shared_b[6:]
    b["shape"] = torch.zeros(2, 2)
    b["steps"] = torch.tensor(4)
    run = store.run("r")
    run.save(a, epoch=0)
    run.save(b, epoch=1)

    read = []
    get = store.blobs.get
    monkeypatch.setattr(store.blobs, "get", lambda digest: read.append(digest) or get(digest))
    diff = store.diff("r", 0, "r", 1)
    assert diff.a == ("r", 0)
    assert diff.b == ("r", 1)
    assert diff.added == ("new",)
    assert diff.removed == ("gone",)
    changed = {c.name: c for c in diff.changed}
    assert set(changed) == {"big", "bias", "y", "shape", "steps"}
    assert changed["big"].max_abs_diff == 2.5
    assert changed["bias"].max_abs_diff == 1.5
    assert changed["y"].max_abs_diff == 100.0 - 8.0
    assert changed["steps"].max_abs_diff == 1.0
    assert changed["shape"].max_abs_diff is None
    assert (changed["shape"].old_shape, changed["shape"].shape) == ((4,), (2, 2))
    assert diff.n_unchanged == 3  # frozen, neighbour, x
    assert diff.added_bytes == 16
    assert diff.removed_bytes == 12
    assert diff.changed_bytes == 8192 * 4 + 5 * 4 + 6 * 4 + 4 * 4 + 8
    frozen = {c.digest for r in run.record(1).tensors if r.name == "frozen" for c in r.chunks}
    assert read
    assert not frozen & set(read), "an unchanged tensor's blobs are never read"


def test_the_plan_reads_nothing_and_finds_unchanged_by_digest(store_url):
    store = open_store(store_url)
    run = store.run("r")
    state = {"w": torch.randn(4096), "b": torch.randn(3)}
    run.save(state, epoch=0)
    run.save(state, epoch=1)
    plan = plan_diff(run.record(0), run.record(1))
    assert plan.suspects == plan.reshaped == plan.added == plan.removed == ()
    assert plan.n_same == 2
    diff = store.diff("r", 0, "r", 1)
    assert diff.changed == ()
    assert diff.n_unchanged == 2


def test_across_runs_and_non_finite_values(store_url):
    store = open_store(store_url)
    store.run("a").save({"w": torch.tensor([1.0, math.nan, math.inf, 2.0])}, epoch=3)
    store.run("b").save({"w": torch.tensor([1.0, math.nan, math.inf, math.nan])}, epoch=5)
    (change,) = store.diff("a", 3, "b", 5).changed
    assert change.max_abs_diff == math.inf  # a value became NaN


def test_integer_and_bfloat16_tensors(store_url):
    store = open_store(store_url)
    run = store.run("r")
    run.save({"i": torch.arange(10), "h": torch.ones(8, dtype=torch.bfloat16)}, epoch=0)
    run.save({"i": torch.arange(10) * 2, "h": torch.full((8,), 3.0, dtype=torch.bfloat16)}, epoch=1)
    changed = {c.name: c.max_abs_diff for c in store.diff("r", 0, "r", 1).changed}
    assert changed == {"i": 9.0, "h": 2.0}
