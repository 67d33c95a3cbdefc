"""The closed dtype table: stable codes, element sizes, and bit-exact save/load per dtype."""

from __future__ import annotations

import uuid

import fsspec
import pytest
import torch

import castore
from castore.errors import FormatError, InvalidCheckpointError
from castore.snapshot.dtypes import code_of, dtype_of, element_size
from tests.strategies import COMPLEX_HALF_WARNING, SUPPORTED_DTYPES, build_tensor, tensor_bytes

# The on-disk codes (docs/format.md): changing one is a format change.
CODES = {
    "f64": ("float64", 8),
    "f32": ("float32", 4),
    "f16": ("float16", 2),
    "bf16": ("bfloat16", 2),
    "f8e4m3fn": ("float8_e4m3fn", 1),
    "f8e4m3fnuz": ("float8_e4m3fnuz", 1),
    "f8e5m2": ("float8_e5m2", 1),
    "f8e5m2fnuz": ("float8_e5m2fnuz", 1),
    "f8e8m0fnu": ("float8_e8m0fnu", 1),
    "c32": ("complex32", 4),
    "c64": ("complex64", 8),
    "c128": ("complex128", 16),
    "i64": ("int64", 8),
    "i32": ("int32", 4),
    "i16": ("int16", 2),
    "i8": ("int8", 1),
    "u64": ("uint64", 8),
    "u32": ("uint32", 4),
    "u16": ("uint16", 2),
    "u8": ("uint8", 1),
    "bool": ("bool", 1),
}
PRESENT = {code: spec for code, spec in CODES.items() if hasattr(torch, spec[0])}

pytestmark = pytest.mark.filterwarnings(COMPLEX_HALF_WARNING)


def test_the_essential_dtypes_are_present():
    essential = {"f64", "f32", "f16", "bf16", "f8e4m3fn", "f8e5m2", "c64", "c128", "bool"}
    assert essential <= set(PRESENT)
    assert len(SUPPORTED_DTYPES) == len(PRESENT)


@pytest.mark.parametrize("code", list(PRESENT))
def test_code_table(code):
    name, size = PRESENT[code]
    dtype = getattr(torch, name)
    assert code_of(dtype) == code
    assert dtype_of(code) is dtype
    assert element_size(code) == size


@pytest.mark.parametrize(
    "dtype", [torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.bits8]
)
def test_unsupported_dtypes_are_refused(dtype):
    with pytest.raises(InvalidCheckpointError) as info:
        code_of(dtype, tensor="model.w")
    assert str(info.value) == (
        f"dtype {dtype} is not supported; convert the tensor to a standard dtype [tensor=model.w]"
    )


@pytest.mark.parametrize("code", ["f128", "F32", "", "float32", "i4"])
def test_unknown_codes_are_format_errors(code):
    with pytest.raises(FormatError, match="this store was written by a newer castore") as info:
        dtype_of(code, tensor="w")
    assert info.value.tensor == "w"


@pytest.fixture
def store():
    name = f"castore-dtypes-{uuid.uuid4().hex}"
    yield castore.open(
        f"memory://{name}",
        chunking=castore.ChunkingOptions(chunk_bytes=4096, pack_below_bytes=1024),
    )
    fsspec.filesystem("memory").rm(f"/{name}", recursive=True)


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_every_dtype_round_trips_bit_exactly(store, dtype):
    # Random bytes reach every bit pattern: NaN payloads, subnormals, negative zeros.
    tree = {
        "scalar": build_tensor(dtype, (), 1, "random"),
        "empty": build_tensor(dtype, (0, 3), 2, "random"),
        "small": build_tensor(dtype, (3, 5), 3, "random"),
        "chunked": build_tensor(dtype, (2600,), 4, "random"),
        "smooth": build_tensor(dtype, (40, 30), 5, "smooth"),
        "strided": build_tensor(dtype, (16, 9), 6, "random").t()[::2],
    }
    store.run("r").save(tree, epoch=0)
    back = store.run("r").load()
    assert list(back) == list(tree)
    for key, tensor in tree.items():
        assert back[key].dtype == dtype, key
        assert back[key].shape == tensor.shape, key
        assert tensor_bytes(back[key]) == tensor_bytes(tensor), key
    dtype_codes = {ref.dtype for ref in store.run("r").record(0).tensors}
    assert dtype_codes == {code_of(dtype)}
