"""Retention: the pure policy (keep-last, keep-best, ties, missing metrics), then
``run.retain`` and ``run.delete`` on a store."""

from __future__ import annotations

import math

import pytest
import torch

import castore
from castore.blobstore.layout import annotation_prefix, part_key
from castore.maintenance.retention import plan_retention
from tests.maintenance.helpers import open_store

EPOCHS = [0, 10, 20, 30, 40, 50]
SCORES = {0: 0.1, 10: 0.9, 20: 0.5, 30: 0.9, 40: None, 50: math.nan}


def test_keep_last():
    plan = plan_retention("r", EPOCHS, {}, keep_last=2)
    assert plan.kept == (40, 50)
    assert plan.forgotten == (0, 10, 20, 30)
    assert [d.reasons for d in plan.decisions][-1] == ("last 2",)


def test_keep_last_more_than_there_are_keeps_all():
    assert plan_retention("r", [3, 1], {}, keep_last=5).kept == (1, 3)


def test_keep_best_ties_go_to_the_earlier_epoch_and_missing_values_never_rank():
    plan = plan_retention("r", EPOCHS, SCORES, keep_best=1, metric="score")
    assert plan.kept == (10,)
    plan = plan_retention("r", EPOCHS, SCORES, keep_best=3, metric="score")
    assert plan.kept == (10, 20, 30)
    plan = plan_retention("r", EPOCHS, SCORES, keep_best=10, metric="score")
    assert plan.kept == (0, 10, 20, 30)  # 40 (missing) and 50 (NaN) have no value


def test_keep_best_lowest_first_with_a_minus():
    plan = plan_retention("r", EPOCHS, SCORES, keep_best=2, metric="-score")
    assert plan.kept == (0, 20)
    assert dict((d.epoch, d.reasons) for d in plan.decisions)[0] == ("best 2 by -score (#1)",)


def test_both_rules_together_give_every_reason():
    plan = plan_retention("r", EPOCHS, SCORES, keep_last=3, keep_best=2, metric="score")
    assert plan.kept == (10, 30, 40, 50)
    reasons = {d.epoch: d.reasons for d in plan.decisions}
    assert reasons[30] == ("last 3", "best 2 by score (#2)")
    assert reasons[0] == ()
    assert {d.epoch: d.value for d in plan.decisions}[10] == 0.9


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, castore.InvalidCheckpointError, "forget every checkpoint"),
        ({"keep_last": -1}, castore.InvalidCheckpointError, "negative"),
        ({"keep_best": 1}, castore.InvalidCheckpointError, "needs a metric"),
        ({"keep_best": 1, "metric": "loss"}, castore.NotFoundError, "no checkpoint"),
    ],
)
def test_refused_policies(kwargs, error, match):
    values = {} if kwargs.get("metric") == "loss" else SCORES
    with pytest.raises(error, match=match):
        plan_retention("r", EPOCHS, values, **kwargs)


def test_empty_run_plans_nothing():
    assert plan_retention("r", [], {}, keep_last=1).decisions == ()


def fill(run, scores):
    for epoch, score in scores.items():
        metrics = {} if score is None else {"score": score}
        run.save({"w": torch.full((4,), float(epoch))}, epoch=epoch, metrics=metrics)


def test_dry_run_writes_nothing(store_url):
    store = open_store(store_url)
    run = store.run("r")
    fill(run, {0: 0.3, 1: 0.9, 2: 0.1})
    listing = store.location.find_stats("")
    plan = run.retain(keep_last=1, keep_best=1, dry_run=True)
    assert plan.forgotten == (0,)
    assert store.location.find_stats("") == listing
    assert run.epochs() == [0, 1, 2]


def test_retain_uses_annotated_metrics_and_forgets_parts_and_annotations(store_url):
    store = open_store(store_url)
    run = store.run("r")
    fill(run, {0: 0.3, 1: 0.9, 2: 0.1, 3: None})
    run.annotate(0, {"score": 5.0})  # an evaluator's later score wins
    run.annotate(1, {"loss": 1.0})
    plan = run.retain(keep_last=1, keep_best=1, metric="score")
    assert plan.kept == (0, 3)
    assert run.epochs() == [0, 3]
    assert set(run.annotations()) == {0}
    names = store.location.list_names(annotation_prefix("r"))
    assert len(names) == 1
    assert not store.location.exists(part_key("r", 1))
    assert run.load(3)["w"].tolist() == [3.0] * 4


def test_retain_by_a_metric_nobody_has_forgets_nothing(store_url):
    run = open_store(store_url).run("r")
    fill(run, {0: 0.3, 1: 0.9})
    with pytest.raises(castore.NotFoundError, match="'scor'"):
        run.retain(keep_best=1, metric="scor")
    assert run.epochs() == [0, 1]


def test_delete_then_save_the_same_epoch_again(store_url):
    store = open_store(store_url)
    run = store.run("r")
    fill(run, {0: 0.3, 1: 0.9})
    run.annotate(1, {"score": 0.2})
    run.load(1)  # cached parts must not outlive the delete
    run.delete(1)
    assert run.epochs() == [0]
    with pytest.raises(castore.NotFoundError, match="no checkpoint at epoch 1"):
        run.load(1)
    run.save({"w": torch.zeros(4)}, epoch=1, metrics={"score": 0.7})
    assert run.load(1)["w"].tolist() == [0.0] * 4
    assert run.open(1).metrics == {"score": 0.7}  # the old annotation went with the old part
    assert open_store(store_url).run("r").open(1).metrics == {"score": 0.7}


def test_delete_of_an_unknown_epoch_is_an_error(store_url):
    run = open_store(store_url).run("r")
    fill(run, {0: 0.3})
    with pytest.raises(castore.NotFoundError, match="no checkpoint at epoch 7") as raised:
        run.delete(7)
    assert (raised.value.run, raised.value.epoch) == ("r", 7)
    assert run.epochs() == [0]
