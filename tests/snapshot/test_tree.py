"""Trees <-> skeleton + named leaves: round trips, exact skeletons, refused inputs."""

from __future__ import annotations

import json
from collections import OrderedDict, defaultdict, namedtuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from castore.errors import FormatError, InvalidCheckpointError
from castore.snapshot.tree import flatten_tree, unflatten_tree
from tests.strategies import assert_trees_equal, dict_keys, plain_values


def round_trip(tree):
    flat = flatten_tree(tree)
    json.loads(flat.skeleton, parse_constant=_no_constants)  # strict JSON: no NaN/Infinity
    return flat, unflatten_tree(flat.skeleton, list(flat.tensors))


def _no_constants(name):
    raise AssertionError(f"skeleton holds the non-JSON constant {name}")


def test_exact_skeleton_and_names():
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    tree = {"model": {"w": a, "b": b}, "opt": [c, {"lr": 0.1}], "epoch": 3, "tag": None}
    flat = flatten_tree(tree)
    assert flat.names == ("model.w", "model.b", "opt.0")
    assert flat.tensors[0] is a
    assert flat.tensors[1] is b
    assert flat.tensors[2] is c
    assert json.loads(flat.skeleton) == {
        "dict": [
            ["model", {"dict": [["w", {"tensor": 0}], ["b", {"tensor": 1}]]}],
            ["opt", {"list": [{"tensor": 2}, {"dict": [["lr", {"value": 0.1}]]}]}],
            ["epoch", {"value": 3}],
            ["tag", {"value": None}],
        ]
    }


def test_skeleton_is_compact_json():
    assert (
        flatten_tree({"a": (1, [])}).skeleton
        == '{"dict":[["a",{"tuple":[{"value":1},{"list":[]}]}]]}'
    )


def test_duplicate_leaf_names_get_suffixes():
    flat = flatten_tree({"a.b": torch.ones(1), "a": {"b": torch.ones(1), "c": [torch.ones(1)]}})
    assert flat.names == ("a.b", "a.b#2", "a.c.0")
    flat = flatten_tree([{"x": torch.ones(1)}, {"x": torch.ones(1)}, {"0.x": torch.ones(1)}])
    assert flat.names == ("0.x", "1.x", "2.0.x")
    flat = flatten_tree({"t": torch.ones(1), "t#2": torch.ones(1), "u": {"": torch.ones(1)}})
    assert len(set(flat.names)) == 3


def test_a_bare_tensor_is_named_tensor():
    t = torch.ones(2)
    flat, back = round_trip(t)
    assert flat.names == ("tensor",)
    assert flat.skeleton == '{"tensor":0}'
    assert back is t


@pytest.mark.parametrize(
    ("value", "node"),
    [
        (float("nan"), {"float": "nan"}),
        (float("inf"), {"float": "inf"}),
        (float("-inf"), {"float": "-inf"}),
        (-0.0, {"value": -0.0}),
        (1e308, {"value": 1e308}),
        (2**70, {"value": 2**70}),
        (True, {"value": True}),
        ("ünïcode ✓", {"value": "ünïcode ✓"}),
    ],
)
def test_plain_values(value, node):
    flat, back = round_trip([value])
    assert json.loads(flat.skeleton) == {"list": [node]}
    assert_trees_equal([value], back)  # same type; NaN is NaN; -0.0 keeps its sign


def test_nested_containers_round_trip():
    t = torch.arange(4)
    tree = {
        "list": [1, [2, [3, []]]],
        "tuple": (t, (None,), ()),
        "dict": {7: "int key", 2.5: "float key", None: "none key", True: "bool key"},
        "empty": {},
        "odict": OrderedDict([("z", 1), ("a", t)]),
        "floats": [float("nan"), float("inf"), -float("inf"), -0.0, 0.5],
    }
    _, back = round_trip(tree)
    assert_trees_equal(tree, back)
    assert back["tuple"][0] is t
    assert back["odict"]["a"] is t
    assert list(back["dict"]) == [7, 2.5, None, True]
    assert [type(k) for k in back["dict"]] == [int, float, type(None), bool]


def test_ordered_dict_metadata_round_trips():
    state = torch.nn.Linear(2, 3).state_dict()
    assert isinstance(state, OrderedDict)
    metadata = state._metadata
    flat, back = round_trip(state)
    assert flat.names == ("weight", "bias")
    assert type(back) is OrderedDict
    assert back._metadata == {key: dict(value) for key, value in metadata.items()}
    model = torch.nn.Linear(2, 3)
    model.load_state_dict(back)
    assert torch.equal(model.weight, state["weight"])


def test_ordered_dict_without_metadata_has_none():
    _, back = round_trip(OrderedDict(a=1))
    assert type(back) is OrderedDict
    assert not hasattr(back, "_metadata")


@given(
    st.recursive(
        plain_values(),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(dict_keys(), children, max_size=3),
            st.dictionaries(st.text(max_size=4), children, max_size=3).map(OrderedDict),
        ),
        max_leaves=12,
    )
)
def test_plain_trees_round_trip(tree):
    flat, back = round_trip(tree)
    assert flat.names == ()
    assert_trees_equal(tree, back)


class Custom:
    pass


Point = namedtuple("Point", "x y")


@pytest.mark.parametrize(
    ("tree", "path", "kind"),
    [
        ({"a": {"b": Custom()}}, "a.b", "tests.snapshot.test_tree.Custom"),
        ({"a": [1, {2, 3}]}, "a.1", "builtins.set"),
        ({"p": Point(1, 2)}, "p", "tests.snapshot.test_tree.Point"),
        ({"d": defaultdict(int)}, "d", "collections.defaultdict"),
        ({"b": b"bytes"}, "b", "builtins.bytes"),
        ({"c": 1j}, "c", "builtins.complex"),
        ([torch.nn.Linear(1, 1)], "0", "torch.nn.modules.linear.Linear"),
        (object(), "<root>", "builtins.object"),
    ],
)
def test_unsupported_leaves_name_their_path(tree, path, kind):
    with pytest.raises(InvalidCheckpointError) as info:
        flatten_tree(tree)
    assert str(info.value).startswith(f"cannot store a {kind} at '{path}': leaves must be")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ((1, 2), "a"),
        (float("nan"), "a"),
        (float("inf"), "a"),
        (b"k", "a"),
        (frozenset(), "a"),
    ],
)
def test_unsupported_keys_name_their_path(key, path):
    with pytest.raises(InvalidCheckpointError) as info:
        flatten_tree({"a": {key: 1}})
    assert str(info.value) == (
        f"dict key {key!r} at '{path}' is not storable: keys must be None, bool, int, str "
        "or a finite float"
    )


def test_non_utf8_text_is_refused():
    with pytest.raises(InvalidCheckpointError, match=r"^string at 'a\.0' is not valid UTF-8"):
        flatten_tree({"a": ["\ud800"]})
    with pytest.raises(InvalidCheckpointError, match=r"^string at 'a' is not valid UTF-8"):
        flatten_tree({"a": {"\udfff": 1}})


def test_unstorable_metadata_is_refused():
    state = OrderedDict(w=torch.ones(1))
    state._metadata = {"": {"obj": object()}}
    with pytest.raises(InvalidCheckpointError, match=r"^state dict _metadata at 'm' is not JSON"):
        flatten_tree({"m": state})


@pytest.mark.parametrize(
    ("skeleton", "message"),
    [
        ("{", "checkpoint skeleton is not valid JSON"),
        ('{"tensor": 1}', "skeleton refers to tensor 1, which does not exist"),
        ('{"tensor": -1}', "skeleton refers to tensor -1, which does not exist"),
        ('{"tensor": "0"}', "skeleton refers to tensor '0', which does not exist"),
        ('{"set": []}', r"unknown skeleton node \['set'\]; written by a newer castore\?"),
        ("[]", "malformed skeleton node"),
        ("{}", "malformed skeleton node"),
        ('{"list": [1]}', "malformed skeleton node 1"),
    ],
)
def test_malformed_skeletons_are_format_errors(skeleton, message):
    with pytest.raises(FormatError, match=message):
        unflatten_tree(skeleton, [torch.ones(1)])
