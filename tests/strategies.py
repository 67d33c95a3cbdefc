"""Hypothesis strategies for castore: dtypes, shapes, tensor data, views, ties and trees.

Tensor bytes come from a drawn seed and fill pattern (numpy generates them), so a
multi-KiB tensor costs hypothesis a few choices, not kilobytes of its buffer. Helpers to
compare trees bit for bit live here too, so property tests share one notion of "equal".
"""

from __future__ import annotations

import math
import struct
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st

# Every dtype castore's table names (snapshot/dtypes.py), where this torch has it.
_DTYPE_NAMES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "complex32",
    "complex64",
    "complex128",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "bool",
)
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = tuple(
    getattr(torch, name) for name in _DTYPE_NAMES if hasattr(torch, name)
)

# torch warns once per process on the first complex32 allocation; tests that may create
# one (the round trip allocates on load too) ignore exactly that warning.
COMPLEX_HALF_WARNING = "ignore:ComplexHalf support is experimental:UserWarning"
# A falsifying tree holds KiB-sized tensors; hypothesis warns that printing it is long, and
# under filterwarnings=error that warning would replace the real failure in the report.
LARGE_REPR_WARNING = "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"

FILLS = ("random", "zeros", "ramp", "smooth")


def dtypes() -> st.SearchStrategy[torch.dtype]:
    return st.sampled_from(SUPPORTED_DTYPES)


def shapes() -> st.SearchStrategy[tuple[int, ...]]:
    """0-d, empty, small n-d, and long 1-d/2-d shapes that span several 4 KiB chunks."""
    return st.one_of(
        st.just(()),
        st.lists(st.integers(0, 5), min_size=1, max_size=4).map(tuple),
        st.tuples(st.integers(0, 2500)),
        st.tuples(st.integers(1, 48), st.integers(1, 64)),
        st.sampled_from([(1500,), (2049,), (4099,), (40, 129), (3, 700)]),
    )


def make_bytes(n: int, seed: int, fill: str) -> np.ndarray:
    """``n`` bytes: random (incompressible), zeros, a ramp, or slowly varying words."""
    if fill == "zeros":
        return np.zeros(n, dtype=np.uint8)
    if fill == "ramp":
        return (np.arange(n, dtype=np.int64) % 251).astype(np.uint8)
    rng = np.random.default_rng(seed)
    if fill == "smooth":
        # Low bytes noisy, high bytes constant: what byte grouping is for.
        data = rng.integers(0, 256, size=n, dtype=np.uint8)
        data[1::2] = 0x3F
        return data
    return rng.integers(0, 256, size=n, dtype=np.uint8)


def build_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int, fill: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = math.prod(shape)
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    data = make_bytes(numel * itemsize, seed, fill)
    if dtype == torch.bool:
        data = data & 1  # any other byte is not a valid bool
    raw = torch.from_numpy(data.copy())
    return raw.view(dtype).reshape(shape)


@st.composite
def tensors(draw: st.DrawFn, dtype: torch.dtype | None = None) -> torch.Tensor:
    dtype = dtype if dtype is not None else draw(dtypes())
    return build_tensor(
        dtype,
        draw(shapes()),
        draw(st.integers(0, 2**32 - 1)),
        draw(st.sampled_from(FILLS)),
    )


VIEW_KINDS = ("same", "transpose", "step", "narrow", "select", "flat_step", "expand", "conj")


def view_of(base: torch.Tensor, kind: str) -> torch.Tensor:
    """A view of ``base`` sharing its storage; ``same`` (or an inapplicable kind) is ``base``."""
    if base.dim() >= 2 and kind == "transpose":
        return base.transpose(0, 1)
    if base.dim() >= 1 and base.shape[0] >= 2:
        if kind == "step":
            return base[::2]
        if kind == "narrow":
            return base.narrow(0, 1, base.shape[0] - 1)
        if kind == "select":
            return base[1]
    if base.dim() >= 1 and base.shape[-1] >= 3 and kind == "flat_step":
        return base[..., 1::2]
    if base.dim() == 1 and kind == "expand":
        return base.expand(3, base.shape[0])
    if base.is_complex() and kind == "conj":
        return base.conj()  # a lazy view: its storage does not hold the values it shows
    return base


def plain_values() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    )


def dict_keys() -> st.SearchStrategy[object]:
    return st.one_of(
        st.text(max_size=6),
        st.integers(-5, 50),
        st.none(),
        st.floats(allow_nan=False, allow_infinity=False),
    )


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(dict_keys(), children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4).map(OrderedDict),
    )


@st.composite
def checkpoint_trees(draw: st.DrawFn) -> Any:
    """A nested dict/OrderedDict/list/tuple of tensors and plain values.

    A small pool of base tensors feeds views (non-contiguous and tied) into the leaves, so
    one tree holds aliases, several views of one storage, and independent tensors. Every
    tree holds at least one tensor.
    """
    pool = draw(st.lists(tensors(), min_size=1, max_size=3))

    @st.composite
    def leaves(draw_leaf: st.DrawFn) -> Any:
        # Views pick a pool tensor by index: a strategy over the tensors themselves would
        # repr them all (kilobytes) whenever hypothesis describes the strategy.
        kind = draw_leaf(st.integers(0, 9))
        if kind < 4:
            return draw_leaf(tensors())
        if kind < 7:
            base = pool[draw_leaf(st.integers(0, len(pool) - 1))]
            return view_of(base, draw_leaf(st.sampled_from(VIEW_KINDS)))
        return draw_leaf(plain_values())

    tree = draw(st.recursive(leaves(), _containers, max_leaves=10))
    # The root is a dict, as a training loop saves it; a bare leaf sits under one key.
    tree = tree if isinstance(tree, dict) else {"root": tree}
    if not iter_tensors(tree):
        tree["model"] = draw(tensors())
    if draw(st.booleans()):
        # Two views of one pool tensor, side by side: a tie in most examples.
        kinds = draw(st.lists(st.sampled_from(VIEW_KINDS), min_size=2, max_size=2))
        tree["tied"] = [view_of(pool[0], kind) for kind in kinds]
    return tree


# ---- comparison helpers -----------------------------------------------------------------


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The row-major bytes of ``tensor``'s values (NaN payloads included)."""
    # A fresh tensor has unit strides even where contiguous() would keep odd ones.
    fresh = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor.detach())
    return fresh.reshape(-1).view(torch.uint8).numpy().tobytes()


def iter_tensors(tree: Any) -> list[torch.Tensor]:
    """Tensors of ``tree`` in castore's leaf order (depth first, insertion order)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for child in tree.values() for t in iter_tensors(child)]
    if isinstance(tree, list | tuple):
        return [t for child in tree for t in iter_tensors(child)]
    return []


def _same_plain(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a):
            return math.isnan(b)
        return struct.pack("<d", a) == struct.pack("<d", b)  # keeps -0.0 apart from 0.0
    return a == b


def assert_trees_equal(original: Any, loaded: Any, path: str = "<root>") -> None:
    """Same container types and keys in order, plain values equal, tensors bit-identical."""
    if isinstance(original, torch.Tensor):
        assert isinstance(loaded, torch.Tensor), path
        assert loaded.dtype == original.dtype, path
        assert loaded.shape == original.shape, path
        assert tensor_bytes(loaded) == tensor_bytes(original), path
        return
    assert type(loaded) is type(original), f"{path}: {type(loaded)} != {type(original)}"
    if isinstance(original, dict):
        assert [(type(k), k) for k in loaded] == [(type(k), k) for k in original], path
        for key in original:
            assert_trees_equal(original[key], loaded[key], f"{path}.{key}")
        if isinstance(original, OrderedDict):
            assert getattr(loaded, "_metadata", None) == getattr(original, "_metadata", None)
    elif isinstance(original, list | tuple):
        assert len(loaded) == len(original), path
        for i, (a, b) in enumerate(zip(original, loaded, strict=True)):
            assert_trees_equal(a, b, f"{path}.{i}")
    else:
        assert _same_plain(original, loaded), f"{path}: {loaded!r} != {original!r}"


def storage_groups(leaves: list[torch.Tensor]) -> list[int]:
    """For each leaf, the index of the first leaf sharing its storage (itself if none).

    Tensors without elements, and conjugate or negative views (whose storage does not hold
    the values they show), share nothing: castore stores them by value.
    """
    first: dict[int, int] = {}
    groups = []
    for index, tensor in enumerate(leaves):
        lazy = tensor.is_conj() or tensor.is_neg()
        if lazy or tensor.numel() == 0 or tensor.untyped_storage().nbytes() == 0:
            groups.append(index)
            continue
        groups.append(first.setdefault(tensor.untyped_storage().data_ptr(), index))
    return groups
