"""The parent run of a multirun: how it ends, from its children's states."""

from __future__ import annotations

import pytest

from mnist_exp import run_tags
from mnist_exp.multirun import MultirunParent
from mnist_exp.store import connect


@pytest.fixture
def store_cfg(make_cfg):
    return make_cfg("data=mnist_sample")


def child(parent: MultirunParent, state: str, status: str, val_accuracy: float | None = None) -> None:
    client = parent.store.client
    run = client.create_run(parent.store.experiment_id, tags={
        "mlflow.parentRunId": parent.run_id, run_tags.STATE_TAG: state, run_tags.OVERRIDES_TAG: state,
    })
    if val_accuracy is not None:
        client.log_metric(run.info.run_id, "final_val_accuracy", val_accuracy)
    client.set_terminated(run.info.run_id, status)


@pytest.mark.parametrize(
    ("children", "ended"),
    [
        ([("PRUNED", "FINISHED", 0.3)], "FINISHED"),  # the pruner stopped it: it did not fail
        ([("PRUNED", "FINISHED", 0.9), ("COMPLETE", "FINISHED", 0.5)], "FINISHED"),
        ([("FAIL", "FAILED", None)], "FAILED"),
        ([], "FINISHED"),
    ],
    ids=["only pruned", "pruned and complete", "only failed", "no jobs"],
)
def test_how_a_parent_ends(store_cfg, children, ended):
    parent = MultirunParent.open(store_cfg, ["-m"])
    for spec in children:
        child(parent, *spec)
    summary = parent.close_grid()
    run = connect(store_cfg).client.get_run(parent.run_id)
    assert run.info.status == ended
    best = summary.best
    assert best is None or best["state"] == "COMPLETE", "never a pruned run"
