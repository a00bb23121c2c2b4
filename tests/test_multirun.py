"""The parent run of a multirun: how it ends, from its children's states."""

from __future__ import annotations

import pytest

from mnist_exp.config.plan import resolve
from mnist_exp.multirun.parent_run import MultirunParent
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_inputs import log_params
from mnist_exp.tracking.store import connect
from tests.conftest import artifact_paths


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
    parent = MultirunParent.open(store_cfg, resolve(store_cfg), ["-m"])
    for spec in children:
        child(parent, *spec)
    summary = parent.close_grid()
    run = connect(store_cfg).client.get_run(parent.run_id)
    assert run.info.status == ended
    best = summary.best
    assert best is None or best["state"] == "COMPLETE", "never a pruned run"


def seeded_child(parent: MultirunParent, seed: int, optimizer: str, val_accuracy: float | None) -> None:
    """A job of a sweep over seeds: params seed and optimizer.name, its final scores (none: it failed)."""
    client = parent.store.client
    overrides = f"seed={seed} optimizer={optimizer}"
    run_id = client.create_run(parent.store.experiment_id, tags={
        "mlflow.parentRunId": parent.run_id, run_tags.STATE_TAG: "COMPLETE" if val_accuracy else "FAIL",
        run_tags.OVERRIDES_TAG: overrides,
    }).info.run_id
    log_params(client, run_id, {"seed": seed, "optimizer.name": optimizer, "epochs": 1})
    if val_accuracy is not None:
        for key in ("final_val_accuracy", "test_accuracy"):
            client.log_metric(run_id, key, val_accuracy)
    client.set_terminated(run_id, "FINISHED" if val_accuracy else "FAILED")


def test_a_sweep_over_seeds_summarises_each_configuration_on_the_parent(store_cfg):
    parent = MultirunParent.open(store_cfg, resolve(store_cfg), ["-m", "seed=1,2,3", "optimizer=sgd,adam"])
    for seed, sgd, adam in ((1, 0.40, 0.90), (2, 0.50, 0.88), (3, None, 0.92)):
        seeded_child(parent, seed, "sgd", sgd)
        seeded_child(parent, seed, "adam", adam)
    summary = parent.close_grid()
    assert [(g.label, g.runs, g.complete) for g in summary.repeats] == [("optimizer=adam", 3, 3),
                                                                        ("optimizer=sgd", 3, 2)]
    adam = summary.repeats[0].scores["final_val_accuracy"]
    assert (adam.mean, adam.std, adam.count) == (pytest.approx(0.9), pytest.approx(0.02), 3)
    client = connect(store_cfg).client
    assert {"repeats_summary.json", "repeats_summary.txt"} <= artifact_paths(client, parent.run_id)
    assert "plots/val_accuracy_by_configuration.png" in artifact_paths(client, parent.run_id, "plots")
    table = client.download_artifacts(parent.run_id, "repeats_summary.txt")
    assert open(table).read().splitlines()[1].split() == [
        "3", "0.9000", "±", "0.0200", "-", "0.9000", "±", "0.0200", "-", "optimizer=adam"]


def test_a_sweep_without_repeated_configurations_has_no_repeats_table(store_cfg):
    parent = MultirunParent.open(store_cfg, resolve(store_cfg), ["-m", "optimizer=sgd,adam"])
    seeded_child(parent, 1, "sgd", 0.4)
    seeded_child(parent, 1, "adam", 0.9)
    assert parent.close_grid().repeats == []
    assert "repeats_summary.json" not in artifact_paths(connect(store_cfg).client, parent.run_id)


def test_a_search_closes_its_parent_under_the_studys_lock(monkeypatch):
    """Two searches sharing a study finish together: each writes the parent's new tags (best.*), and a SQLite store
    refused the second writer (UNIQUE constraint failed: tags.key, tags.run_uuid) in a traceback. Closing is one
    step per study."""
    import contextlib
    from types import SimpleNamespace

    from mnist_exp.multirun.search import search_space

    held = []

    @contextlib.contextmanager
    def lock(url, name):
        held.append((url, name))
        try:
            yield
        finally:
            held.pop()

    closed_holding = []
    monkeypatch.setattr(search_space, "storage_lock", lock)
    monkeypatch.setattr(MultirunParent, "_close_search", lambda self, *args: closed_holding.append(list(held)))
    result = SimpleNamespace(storage="sqlite:////tmp/study.db", study_name="shared")
    MultirunParent.close_search(object.__new__(MultirunParent), result, [], None)
    assert closed_holding == [[("sqlite:////tmp/study.db", "shared parent run")]] and held == []
