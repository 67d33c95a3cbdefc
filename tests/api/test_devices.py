"""Devices: map_location places tensors; CUDA tensors save from the device.

The CUDA cases need a GPU and are skipped without one; the CPU cases run everywhere.
"""

from __future__ import annotations

import uuid

import pytest
import torch

import castore

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fresh_run() -> castore.Run:
    return castore.open(f"memory://{uuid.uuid4().hex}").run("r")


@pytest.mark.parametrize("map_location", [None, "cpu", torch.device("cpu")])
def test_map_location_cpu_keeps_ties(map_location):
    run = fresh_run()
    weight = torch.randn(10, 4)
    run.save({"wte": weight, "lm_head": weight, "row": weight[2]}, epoch=0)
    state = run.load(map_location=map_location)
    assert state["wte"].device.type == "cpu"
    assert state["wte"].untyped_storage().data_ptr() == state["row"].untyped_storage().data_ptr()
    assert torch.equal(state["row"], weight[2])


def test_recorded_device_is_informative():
    run = fresh_run()
    run.save({"w": torch.ones(2)}, epoch=0)
    assert [t.device for t in run.record(0).tensors] == ["cpu"]


@needs_cuda
def test_cuda_tensors_save_from_device_and_load_onto_it():
    run = fresh_run()
    weight = torch.randn(64, 64, device="cuda")
    run.save({"w": weight, "tied": weight, "view": weight[3]}, epoch=0)
    assert run.record(0).tensors[0].device == "cuda:0"
    on_cpu = run.load()
    assert on_cpu["w"].device.type == "cpu"
    assert torch.equal(on_cpu["w"], weight.cpu())
    on_gpu = run.load(map_location="cuda")
    assert on_gpu["w"].device.type == "cuda"
    assert torch.equal(on_gpu["w"], weight)
    assert on_gpu["w"].untyped_storage().data_ptr() == on_gpu["view"].untyped_storage().data_ptr()
