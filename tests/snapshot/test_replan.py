"""replan_entries: an identical state reuses the previous plan, anything else is planned anew."""

from __future__ import annotations

import pytest
import torch

from castore.errors import InvalidCheckpointError
from castore.snapshot.refs import Role
from castore.snapshot.tensors import plan_entries, replan_entries


def summary(entries):
    return [
        (e.name, e.role, e.dtype, e.shape, e.device, e.base, e.storage_offset, e.stride)
        for e in entries
    ]


def sources(entries):
    return [e.source for e in entries]


def own_sources(entries):
    return [e.source for e in entries if e.role is Role.TENSOR]


def state():
    w = torch.randn(4, 4)
    return ("w", "tied", "b", "step"), (w, w, torch.randn(4), torch.tensor(3))


def test_the_same_tensors_get_the_very_same_plan():
    names, tensors = state()
    first = replan_entries(names, tensors, None)
    assert summary(first.entries) == summary(plan_entries(names, tensors))
    assert replan_entries(names, tensors, first) is first


def test_new_tensor_objects_at_the_same_memory_are_given_as_sources():
    names, tensors = state()
    first = replan_entries(names, tensors, None)
    detached = tuple(t.detach() for t in tensors)
    again = replan_entries(names, detached, first)
    assert summary(again.entries) == summary(first.entries)
    expected = plan_entries(names, detached)
    assert all(a is b for a, b in zip(sources(again.entries), sources(expected), strict=True))
    assert [e.role for e in again.entries] == [Role.TENSOR, Role.ALIAS, Role.TENSOR, Role.TENSOR]


CHANGES = {
    "shape": lambda t: t.view(2, 8),
    "rows": lambda t: t[:2],
    "dtype": lambda t: t.view(torch.int32),
    "strides": lambda t: t.t(),
    "offset": lambda t: t.view(-1)[4:8].view(2, 2),
    "storage": lambda t: t.clone(),
    "conjugate": lambda t: torch.complex(t, t).conj(),
    "negative": lambda t: torch.complex(t, t).conj().imag,
    "device": lambda t: t.to("meta"),
    "layout": lambda t: t.to_sparse(),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_change_of_a_tensor_is_planned_anew(change):
    names, tensors = state()
    first = replan_entries(names, tensors, None)
    changed = (CHANGES[change](tensors[0]), *tensors[1:])
    try:
        expected = plan_entries(names, changed)
    except InvalidCheckpointError:
        with pytest.raises(InvalidCheckpointError):
            replan_entries(names, changed, first)
        return
    again = replan_entries(names, changed, first)
    assert again is not first
    assert summary(again.entries) == summary(expected)
    own = [e.source for e in again.entries if e.role is Role.TENSOR]
    assert all(a is b for a, b in zip(own, own_sources(expected), strict=True))


def test_other_names_are_planned_anew():
    names, tensors = state()
    first = replan_entries(names, tensors, None)
    renamed = ("v", *names[1:])
    again = replan_entries(renamed, tensors, first)
    assert [e.name for e in again.entries] == ["v", "tied", "b", "step"]


def test_a_plan_with_a_shared_storage_entry_is_never_reused():
    x = torch.randn(4, 4)
    names, tensors = ("x", "xt"), (x, x.t())
    first = replan_entries(names, tensors, None)
    assert first.signatures is None
    again = replan_entries(names, tensors, first)
    assert again is not first
    assert [e.role for e in again.entries] == [Role.STORAGE, Role.VIEW, Role.VIEW]
    assert again.entries[0].source is not first.entries[0].source


@pytest.mark.parametrize(
    "lazy",
    [torch.Tensor.conj, torch._neg_view],
    ids=["conjugate", "negative"],
)
def test_a_tie_that_becomes_a_lazy_view_is_planned_anew(lazy):
    z = torch.complex(torch.randn(4), torch.randn(4))
    first = replan_entries(("a", "b"), (z, z), None)
    assert [e.role for e in first.entries] == [Role.TENSOR, Role.ALIAS]
    changed = (z, lazy(z))
    again = replan_entries(("a", "b"), changed, first)
    assert summary(again.entries) == summary(plan_entries(("a", "b"), changed))
    assert [e.role for e in again.entries] == [Role.TENSOR, Role.TENSOR]
    assert again.entries[1].source is changed[1]
