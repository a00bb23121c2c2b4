"""Searches of several objectives (accuracy up, model size down): the config, the Pareto front, the table."""

from __future__ import annotations

import pytest

from mnist_exp import config
from mnist_exp.multirun.job_context import JobOutcome
from mnist_exp.reports import tables
from mnist_exp.system.errors import ExperimentError
from tests.conftest import make_search

OBJECTIVES = {"val_accuracy": "maximize", "parameters": "minimize"}


def widths(job) -> list[int]:
    text = next(o.split("=", 1)[1] for o in job.overrides if o.startswith("model.hidden_units="))
    return [int(w) for w in text.strip("[]").split(",")]


def accuracy_against_size(jobs, first_index):
    """Made-up objectives in conflict: wider models score higher and are larger."""
    outcomes = []
    for job in jobs:
        size = float(sum(widths(job)) * 1000)
        accuracy = 1 - 1 / (1 + sum(widths(job)))
        outcomes.append(JobOutcome("COMPLETE", value=accuracy, values=(accuracy, size), test_accuracy=0.5,
                                   run_id=f"run-{job.number}"))
    return outcomes


def dominates(a, b) -> bool:
    (acc_a, size_a), (acc_b, size_b) = a.values, b.values
    return acc_a >= acc_b and size_a <= size_b and (acc_a, size_a) != (acc_b, size_b)


def test_a_search_of_two_objectives_finds_the_pareto_front(tmp_path):
    result = make_search(tmp_path, n_trials=8, objectives=OBJECTIVES).run([], accuracy_against_size)
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(complete) == 8 and all(len(t.values) == 2 for t in complete)
    front = result.front
    assert front and all(not any(dominates(other, t) for other in complete) for t in front)
    assert all(any(dominates(f, t) for f in front) for t in complete if not t.on_front)
    assert result.best is front[0] and result.best.value == max(t.values[0] for t in complete)
    table = tables.trials_table(result.trials, "val_accuracy", list(OBJECTIVES))
    header, *rows = table.splitlines()
    assert header.split()[:6] == ["trial", "state", "val_accuracy", "parameters", "front", "test_acc"]
    assert sum(row.split()[4] == "*" for row in rows) == len(front)
    assert f"{int(front[0].values[1]):,}" in table


def test_a_study_of_one_objective_is_not_resumed_with_two(tmp_path):
    make_search(tmp_path, n_trials=1).run([], accuracy_against_size)
    with pytest.raises(ExperimentError, match="was created to maximize, not maximize and minimize"):
        make_search(tmp_path, objectives=OBJECTIVES).open_study()


@pytest.mark.parametrize(("value", "ok"), [
    ("parameters", True), (["val_accuracy", "parameters"], True), (["val_loss", "macs_per_example"], True),
    (["val_accuracy"], False), (["val_accuracy", "val_accuracy"], False), (["val_accuracy", "size"], False),
])
def test_optimized_metric_is_one_metric_or_a_list_of_several(make_cfg, value, ok):
    override = f"optimized_metric=[{','.join(value)}]" if isinstance(value, list) else f"optimized_metric={value}"
    cfg = make_cfg(override)
    if ok:
        config.validate(cfg)
        assert config.objectives(cfg) == (value if isinstance(value, list) else [value])
    else:
        with pytest.raises(ExperimentError, match=r"^optimized_metric=.* is invalid: expected one of val_accuracy"):
            config.validate(cfg)


def test_early_stopping_watches_the_first_objective_that_changes_during_training(make_cfg):
    assert config.monitored_metric(make_cfg("optimized_metric=[parameters,val_loss]")) == "val_loss"
    assert config.monitored_metric(make_cfg("optimized_metric=parameters")) == "val_loss"
    assert config.monitored_metric(make_cfg()) == "val_accuracy"


def test_every_sampler_takes_two_objectives(tmp_path):
    for name in ("tpe", "random", "nsgaii"):
        folder = tmp_path / name
        folder.mkdir()
        found = make_search(folder, n_trials=3, objectives=OBJECTIVES, sampler={"name": name, "seed": 0})
        assert len(found.run([], accuracy_against_size).trials) == 3
