"""Rebuilding tensors from manifest entries: forged entries are refused before allocation."""

from __future__ import annotations

import dataclasses
import uuid

import fsspec
import pytest
import torch

import castore
from castore.api.load import load_checkpoint
from castore.codec import hash_bytes
from castore.errors import FormatError, IntegrityError
from castore.snapshot.rebuild import allocate, assemble, byte_view, check_refs
from castore.snapshot.refs import ChunkRef, Role, TensorRef

D1 = hash_bytes(b"one")
D2 = hash_bytes(b"two")
D3 = hash_bytes(b"three")
D4 = hash_bytes(b"four")


def tensor(name="w", shape=(2, 3), dtype="f32", chunks=None, **kw):
    if chunks is None:
        chunks = (ChunkRef(D1, 0, 24, 24),)
    return TensorRef(name, Role.TENSOR, dtype, shape, chunks, **kw)


def storage(name="s", n=10, dtype="f32"):
    return TensorRef(name, Role.STORAGE, dtype, (n,), (ChunkRef(D3, 0, 4 * n, 4 * n),))


def view(name="v", base="s", shape=(3,), stride=(1,), offset=0, dtype="f32"):
    return TensorRef(name, Role.VIEW, dtype, shape, base=base, stride=stride, storage_offset=offset)


def alias(name="a", base="w", shape=(2, 3), dtype="f32"):
    return TensorRef(name, Role.ALIAS, dtype, shape, base=base)


def test_consistent_refs_pass():
    check_refs(
        [
            tensor(),
            alias(),
            storage(),
            view(),
            view("v2", shape=(2, 5), stride=(5, 1)),
            view("v3", shape=(3,), stride=(3,), offset=3),  # last element 9: inside
            view("empty", shape=(0,), stride=(1,), offset=50),  # no elements, no reach
            tensor("z", shape=(0, 4), chunks=()),
            tensor("packed", shape=(2,), chunks=(ChunkRef(D2, 40, 8, 100),)),
            tensor(
                "split",
                shape=(5,),
                chunks=(ChunkRef(D4, 0, 12, 12), ChunkRef(D2, 92, 8, 100)),
            ),
        ]
    )


def expect(refs, message, tensor_name):
    with pytest.raises(IntegrityError, match=message) as info:
        check_refs(refs)
    assert info.value.tensor == tensor_name
    return info.value


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (tensor(shape=(2, 4)), "chunks hold 24 bytes, dtype and shape need 32"),
        (tensor(shape=(2,)), "chunks hold 24 bytes, dtype and shape need 8"),
        (tensor(dtype="f64"), "chunks hold 24 bytes, dtype and shape need 48"),
        (tensor(shape=(0,)), "chunks hold 24 bytes, dtype and shape need 0"),
        (tensor(chunks=()), "chunks hold 0 bytes, dtype and shape need 24"),
        (tensor(shape=(2**31, 2**31)), "dtype and shape need 18446744073709551616"),
        (tensor(shape=(2, -3)), r"negative dimension in shape \(2, -3\)"),
    ],
)
def test_lengths_must_match_dtype_and_shape(ref, message):
    expect([ref], message, "w")


@pytest.mark.parametrize(
    "chunk",
    [
        ChunkRef(D1, 0, 24, 23),  # past the end of the blob
        ChunkRef(D1, 1, 24, 24),
        ChunkRef(D1, -8, 24, 24),  # before its start
        ChunkRef(D1, 2**62, 24, 2**62),
    ],
)
def test_chunks_must_lie_inside_their_blob(chunk):
    error = expect([tensor(chunks=(chunk,))], "lies outside its blob", "w")
    assert error.digest == D1


def test_zero_and_negative_chunk_lengths_are_refused():
    chunks = (ChunkRef(D1, 0, 24, 24), ChunkRef(D2, 0, 0, 8))
    expect([tensor(chunks=chunks)], r"chunk range 0\+0 lies outside", "w")
    chunks = (ChunkRef(D1, 0, 28, 28), ChunkRef(D2, 4, -4, 8))
    expect([tensor(chunks=chunks)], r"chunk range 4\+-4 lies outside", "w")


@pytest.mark.parametrize(
    "refs",
    [
        [alias(base="missing")],
        [alias(base=None)],
        [tensor(), alias(shape=(3, 2))],
        [tensor(), alias(dtype="i32")],
        [storage("w", n=6), alias()],  # an alias must point at a TENSOR
        [tensor(), alias("a"), alias("b", base="a")],  # not at another alias
    ],
)
def test_aliases_need_a_matching_tensor(refs):
    name = refs[-1].name
    expect(refs, "does not match its base", name)


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        ([view(base="missing")], "has no matching storage"),
        ([view(base=None)], "has no matching storage"),
        ([tensor("s", shape=(10,), chunks=(ChunkRef(D1, 0, 40, 40),)), view()], "no matching"),
        ([storage(), view(dtype="i32")], "has no matching storage"),
        ([storage(), view(stride=())], "view stride does not match its shape"),
        ([storage(), view(stride=(1, 1))], "view stride does not match its shape"),
        ([storage(), view(stride=(-1,))], "view stride does not match its shape"),
        ([storage(), view(shape=(11,))], "view reaches outside its storage"),
        ([storage(), view(offset=8)], "view reaches outside its storage"),
        ([storage(), view(offset=-1)], "view reaches outside its storage"),
        ([storage(), view(shape=(2, 5), stride=(5, 2))], "view reaches outside its storage"),
        ([storage(), view(shape=(4,), stride=(3,), offset=1)], "view reaches outside its storage"),
    ],
)
def test_views_must_stay_inside_their_storage(refs, message):
    expect(refs, message, "v")


def test_names_are_unique():
    with pytest.raises(IntegrityError, match="manifest lists a tensor name twice"):
        check_refs([tensor(), tensor()])


def test_unknown_dtype_codes_are_format_errors():
    with pytest.raises(FormatError, match="unknown dtype code 'f128'"):
        check_refs([tensor(dtype="f128")])


def test_allocate_and_assemble_rebuild_ties():
    refs = [
        tensor("w", shape=(2, 3)),
        alias("a", base="w"),
        storage("s", n=6),
        view("row", shape=(3,), stride=(1,), offset=3),
        view("col", shape=(2,), stride=(3,), offset=1),
        tensor("e", shape=(0,), chunks=()),
    ]
    check_refs(refs)
    data = allocate(refs)
    assert sorted(data) == ["e", "s", "w"]  # only entries that carry bytes
    assert data["w"].shape == (2, 3)
    assert data["w"].dtype == torch.float32
    byte_view(data["w"])[:] = torch.arange(6, dtype=torch.float32).view(torch.uint8).numpy()
    byte_view(data["s"])[:] = torch.arange(10, 16, dtype=torch.float32).view(torch.uint8).numpy()
    tensors = assemble(refs, data)
    assert sorted(tensors) == ["a", "col", "e", "row", "w"]  # STORAGE is not user-visible
    assert tensors["a"] is tensors["w"]
    assert tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["row"].tolist() == [13, 14, 15]
    assert tensors["col"].tolist() == [11, 14]
    assert tensors["row"].untyped_storage().data_ptr() == data["s"].untyped_storage().data_ptr()
    assert tensors["col"].untyped_storage().data_ptr() == data["s"].untyped_storage().data_ptr()


def test_byte_view_writes_through():
    t = torch.zeros(2, 2, dtype=torch.int16)
    view_bytes = byte_view(t)
    assert view_bytes.shape == (8,)
    view_bytes[0] = 7
    assert t[0, 0] == 7


@pytest.fixture
def store():
    name = f"castore-rebuild-{uuid.uuid4().hex}"
    yield castore.open(f"memory://{name}")
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


def forge(store, change):
    """Save a pack of two tensors, then load a record with ``change`` applied to it."""
    run = store.run("r")
    run.save({"a": torch.ones(4), "b": torch.zeros(4)}, epoch=0)
    record = run.record(0)
    a, b = record.tensors
    assert a.chunks[0].digest == b.chunks[0].digest  # one packed blob of 32 bytes
    forged = dataclasses.replace(record, tensors=change(a, b))
    return load_checkpoint(store.blobs, forged, transfer=store.options.transfer)


def test_a_forged_shape_is_refused_before_loading(store):
    with pytest.raises(IntegrityError, match="chunks hold 16 bytes, dtype and shape need 32"):
        forge(store, lambda a, b: (a, dataclasses.replace(b, shape=(8,))))


def test_a_forged_blob_length_is_refused(store):
    def change(a, b):
        def longer(ref):
            return dataclasses.replace(
                ref, chunks=(dataclasses.replace(ref.chunks[0], blob_length=64),)
            )

        return (longer(a), longer(b))

    with pytest.raises(IntegrityError, match="frame says 32 decoded bytes, the manifest says 64"):
        forge(store, change)


def test_chunks_of_one_blob_must_agree_on_its_length(store):
    def change(a, b):
        chunk = dataclasses.replace(b.chunks[0], offset=100, blob_length=116)
        return (a, dataclasses.replace(b, chunks=(chunk,)))

    with pytest.raises(IntegrityError, match="chunks of one blob disagree on its length") as info:
        forge(store, change)
    assert info.value.tensor == "b"


def test_check_refs_names_the_disagreeing_chunk():
    refs = [
        tensor("w", chunks=(ChunkRef(D1, 0, 24, 48),)),
        tensor("u", chunks=(ChunkRef(D1, 24, 24, 49),)),
    ]
    error = expect(refs, r"^chunks of one blob disagree on its length", "u")
    assert error.digest == D1
