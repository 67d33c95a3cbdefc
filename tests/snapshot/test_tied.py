"""Tied tensors stay tied; views round-trip by value; unstorable tensors are refused early."""

from __future__ import annotations

import os
import uuid
import warnings

import fsspec
import pytest
import torch

import castore
from castore.errors import InvalidCheckpointError
from castore.snapshot.refs import Role
from castore.snapshot.tensors import check_tensor, host_bytes, plan_entries
from tests.strategies import tensor_bytes

CHUNKING = castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024)


@pytest.fixture
def store():
    name = f"castore-tied-{uuid.uuid4().hex}"
    yield castore.open(f"memory://{name}", chunking=CHUNKING)
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def save_load(store, tree):
    run = store.run(f"r{uuid.uuid4().hex[:8]}")
    run.save(tree, epoch=0)
    return run.load(), run.record(0)


def ptr(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def summary(entries):
    return [
        (e.name, e.role, e.shape, e.base, e.storage_offset, e.stride, e.source is not None)
        for e in entries
    ]


def test_identical_ties_become_aliases():
    w = torch.randn(4, 3)
    entries = plan_entries(("enc.w", "dec.w", "head.w"), (w, w, w))
    assert summary(entries) == [
        ("enc.w", Role.TENSOR, (4, 3), None, 0, (), True),
        ("dec.w", Role.ALIAS, (4, 3), "enc.w", 0, (), False),
        ("head.w", Role.ALIAS, (4, 3), "enc.w", 0, (), False),
    ]
    assert entries[0].source is w


def test_equal_views_of_one_storage_are_aliases():
    w = torch.randn(4, 3)
    p = torch.nn.Parameter(w)  # shares w's storage, same view
    entries = plan_entries(("w", "other", "p"), (w, torch.randn(2), p))
    assert [(e.name, e.role, e.base) for e in entries] == [
        ("w", Role.TENSOR, None),
        ("other", Role.TENSOR, None),
        ("p", Role.ALIAS, "w"),
    ]


def test_different_views_become_storage_and_views():
    x = torch.arange(10.0)
    a, b = x[2:5], x[4:8]
    entries = plan_entries(("a", "b"), (a, b))
    assert summary(entries) == [
        ("a@storage", Role.STORAGE, (6,), None, 0, (), True),
        ("a", Role.VIEW, (3,), "a@storage", 0, (1,), False),
        ("b", Role.VIEW, (4,), "a@storage", 2, (1,), False),
    ]
    assert entries[0].source.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert entries[0].nbytes == 24


def test_storage_entries_sit_before_their_first_view():
    x = torch.arange(12.0).reshape(3, 4)
    entries = plan_entries(("first", "w", "wt", "last"), (torch.ones(1), x, x.t(), torch.ones(2)))
    assert [(e.name, e.role) for e in entries] == [
        ("first", Role.TENSOR),
        ("w@storage", Role.STORAGE),
        ("w", Role.VIEW),
        ("wt", Role.VIEW),
        ("last", Role.TENSOR),
    ]
    assert [e.stride for e in entries[2:4]] == [(4, 1), (1, 4)]


def test_aliases_load_as_one_tensor(store):
    w = torch.randn(5, 3)
    back, record = save_load(store, {"enc": {"w": w}, "dec": {"w": w}, "other": w.clone()})
    assert back["enc"]["w"] is back["dec"]["w"]
    assert ptr(back["other"]) != ptr(back["enc"]["w"])
    assert torch.equal(back["dec"]["w"], w)
    assert [t.role for t in record.tensors] == [Role.TENSOR, Role.ALIAS, Role.TENSOR]
    assert record.tensors[1].chunks == ()


@pytest.mark.parametrize(
    "views",
    [
        lambda x: [x, x.t()],
        lambda x: [x[1:], x[:, ::2]],
        lambda x: [x[0], x[2], x[1, 1:]],
        lambda x: [x, x[1:3], x.t(), x],
        lambda x: [x.reshape(-1)[::3], x.reshape(-1)[1::3]],
        lambda x: [x[0].expand(4, 5), x[1]],
        lambda x: [x.diagonal(), x],
    ],
    ids=["transpose", "slices", "rows", "mixed", "interleaved", "expand", "diagonal"],
)
def test_views_of_one_storage_load_sharing_storage(store, views):
    x = torch.randn(6, 5)
    tensors = views(x)
    back, record = save_load(store, {"t": tensors})
    loaded = back["t"]
    assert len({ptr(t) for t in loaded}) == 1
    for original, got in zip(tensors, loaded, strict=True):
        assert got.shape == original.shape
        assert got.stride() == original.stride()
        assert torch.equal(got, original)
    # Writing through one view shows through the others, exactly as in the original.
    target = next(i for i, t in enumerate(tensors) if 0 not in t.stride())
    tensors[target].mul_(-2)
    loaded[target].mul_(-2)
    for original, got in zip(tensors, loaded, strict=True):
        assert torch.equal(got, original)
    roles = [t.role for t in record.tensors]
    assert roles.count(Role.STORAGE) == 1
    assert roles.count(Role.VIEW) == len(tensors)


def test_storage_spans_only_the_viewed_bytes(store):
    x = torch.arange(1000.0)
    a, b = x[100:110], x[105:120]
    _, record = save_load(store, {"a": a, "b": b})
    storage = record.tensors[0]
    assert (storage.name, storage.role, storage.shape) == ("a@storage", Role.STORAGE, (20,))
    assert storage.stored_length == 80
    assert record.logical_bytes == 80


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(7, 9).t(),
        lambda: torch.randn(20)[::3],
        lambda: torch.randn(4, 6, 5)[:, 1:5:2],
        lambda: torch.randn(3, 4).permute(1, 0)[1:],
        lambda: torch.randn(5).expand(3, 5),
        lambda: torch.randn(2, 3, 4).transpose(0, 2),
        lambda: torch.randn(30, 40).t()[::7, 3:],
        lambda: torch.randn(1000, 3)[:, 1],  # spans several 4 KiB chunks once made contiguous
    ],
)
def test_non_contiguous_tensors_round_trip_by_value(store, make):
    tensor = make()
    assert not tensor.is_contiguous()
    back, record = save_load(store, {"t": tensor})
    assert back["t"].shape == tensor.shape
    assert back["t"].is_contiguous()
    assert tensor_bytes(back["t"]) == tensor_bytes(tensor)
    assert record.tensors[0].role == Role.TENSOR
    assert record.logical_bytes == tensor.numel() * tensor.element_size()


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(3.0)[1::2],
        lambda: torch.arange(12.0).reshape(3, 4)[1:2, 1::4],
        lambda: torch.arange(8, dtype=torch.int16)[::5][1:],
    ],
    ids=["step", "2d", "int16"],
)
def test_single_element_strided_views_round_trip(store, make):
    tensor = make()
    assert tensor.numel() == 1
    assert tensor.stride()[-1] != 1
    back, _ = save_load(store, {"t": tensor})
    assert tensor_bytes(back["t"]) == tensor_bytes(tensor)


def test_host_bytes_is_row_major():
    x = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    assert bytes(host_bytes(x.t())) == x.t().contiguous().numpy().tobytes()
    assert bytes(host_bytes(torch.tensor(7, dtype=torch.int32))) == b"\x07\x00\x00\x00"


def test_views_with_different_dtypes_are_stored_apart(store):
    x = torch.arange(8, dtype=torch.float32)
    as_int = x.view(torch.int32)
    back, record = save_load(store, {"f": x, "i": as_int})
    assert [t.role for t in record.tensors] == [Role.TENSOR, Role.TENSOR]
    assert torch.equal(back["f"], x)
    assert torch.equal(back["i"], as_int)


def test_empty_views_are_stored_on_their_own(store):
    x = torch.arange(5.0)
    back, record = save_load(store, {"x": x, "none": x[2:2], "y": x[1:]})
    assert back["none"].shape == (0,)
    assert ptr(back["x"]) == ptr(back["y"])
    roles = {t.name: t.role for t in record.tensors}
    assert roles == {"x@storage": Role.STORAGE, "x": Role.VIEW, "none": Role.TENSOR, "y": Role.VIEW}


def test_storage_entry_name_cannot_collide_with_a_leaf(store):
    x = torch.arange(10.0)
    tree = {"a": x, "b": x[2:5], "a@storage": torch.ones(3), "a@storage#2": torch.zeros(2)}
    back, record = save_load(store, tree)
    assert torch.equal(back["a@storage"], torch.ones(3))
    assert torch.equal(back["a@storage#2"], torch.zeros(2))
    assert torch.equal(back["b"], x[2:5])
    assert ptr(back["a"]) == ptr(back["b"])
    names = [t.name for t in record.tensors]
    assert names == ["a@storage#3", "a", "b", "a@storage", "a@storage#2"]


@pytest.mark.parametrize(
    "pair",
    [
        lambda c: (c, c.conj()),
        lambda c: (c.imag, c.conj().imag),
    ],
    ids=["conj", "neg"],
)
def test_conjugate_views_are_not_aliases(store, pair):
    c = torch.randn(4, dtype=torch.complex64)
    first, second = pair(c)
    back, record = save_load(store, {"a": first, "b": second})
    assert torch.equal(back["a"], first)
    assert torch.equal(back["b"], second.resolve_conj().resolve_neg())
    assert not back["b"].is_conj()
    assert not back["b"].is_neg()
    assert [t.role for t in record.tensors] == [Role.TENSOR, Role.TENSOR]


def test_a_lone_conjugate_view_round_trips(store):
    c = torch.randn(4, dtype=torch.complex64)
    back, _ = save_load(store, {"c": c.conj()})
    assert torch.equal(back["c"], c.conj().resolve_conj())


def _quiet(make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prototype/beta/deprecation notices of torch
        return make()


REFUSED = {
    "sparse_coo": (lambda: torch.eye(3).to_sparse(), "torch.sparse_coo tensors are not"),
    "sparse_csr": (lambda: torch.eye(3).to_sparse_csr(), "torch.sparse_csr tensors are not"),
    "quantized": (
        lambda: torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8),
        "quantized tensors are not supported; dequantize() first",
    ),
    "meta": (
        lambda: torch.empty(3, device="meta"),
        "meta tensors have no data to store; materialise them first",
    ),
    "nested": (
        lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
        "nested tensors are not supported; unbind them into a list",
    ),
    "subclass": (
        lambda: torch.ones(3).as_subclass(type("Sub", (torch.Tensor,), {})),
        "tensor subclass Sub is not supported",
    ),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_unstorable_tensors_are_refused_before_any_write(tmp_path, kind):
    make, message = REFUSED[kind]
    bad = _quiet(make)
    store = castore.open(str(tmp_path), chunking=CHUNKING)
    big = torch.randn(5000)  # would be several blobs, had the save started writing
    with pytest.raises(InvalidCheckpointError) as info:
        store.run("r").save({"good": big, "m": {"bad": bad}}, epoch=0)
    assert info.value.tensor == "m.bad"
    assert str(info.value).startswith(message)
    assert sorted(os.listdir(tmp_path)) == ["castore.json"]
    assert store.run("r").epochs() == []
    with pytest.raises(InvalidCheckpointError):
        check_tensor(bad, "x")
