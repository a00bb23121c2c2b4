"""The Optuna search loop with a fake launcher (no training): counting, resuming, failures, pruning."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest

from mnist_exp import tuning
from mnist_exp.errors import ExperimentError, RunPruned

SPACE = {
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "batch_size": {"type": "int", "low": 32, "high": 256, "step": 32},
    "model.hidden_units": {"type": "layers", "min_layers": 1, "max_layers": 3, "low": 16, "high": 512, "log": True},
}


@pytest.fixture(autouse=True)
def forget_study_env(monkeypatch):
    """Search.run exports the study for its workers; keep that out of other tests."""
    monkeypatch.setenv(tuning.STUDY_ENV, "")


def make_search(tmp_path, **changes) -> tuning.Search:
    settings = {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "study_name": "test", "metric": "val_accuracy",
        "direction": "maximize", "space": SPACE, "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"}, "n_trials": 5,
    }
    return tuning.Search(**{**settings, **changes})


def value_of(overrides: list[str]) -> float:
    """A made-up objective: larger learning rates score higher."""
    lr = next(float(o.split("=", 1)[1]) for o in overrides if o.startswith("optimizer.lr="))
    return lr * 10


def trial_id(overrides: list[str]) -> int:
    return int(next(o for o in overrides if tuning.TRIAL_ENV in o).split("=", 1)[1])


def test_overrides_are_valid_hydra_syntax_for_every_parameter_type():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    overrides = tuning.suggest_overrides(trial, SPACE)
    keys = [o.split("=", 1)[0] for o in overrides]
    assert keys == ["optimizer", "optimizer.lr", "batch_size", "model.hidden_units"]
    widths = overrides[3].split("=", 1)[1]
    assert widths.startswith("[") and widths.endswith("]") and " " not in widths
    assert all(16 <= int(w) <= 512 for w in widths[1:-1].split(","))
    assert int(overrides[2].split("=")[1]) % 32 == 0
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    assert parsed[3].value() == [int(w) for w in widths[1:-1].split(",")]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({}, "search_space is empty"),
        ({"optimizer.lr": {"type": "float", "low": 0.1, "high": 0.001}}, "inverted bounds: low=0.1 > high=0.001"),
        ({"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "log scale, so low must be > 0"),
        ({"x": {"type": "normal"}}, "type='normal' is invalid"),
        ({"x": {"type": "categorical", "choices": []}}, "choices must be a non-empty list"),
        ({"m": {"type": "layers", "low": 8, "high": 64, "min_layers": 3, "max_layers": 2}}, "min_layers <= max_layers"),
    ],
)
def test_bad_search_spaces_are_rejected(space, message):
    with pytest.raises(ExperimentError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        tuning.check_space(space)


def test_bad_sampler_and_pruner_names():
    with pytest.raises(ExperimentError, match="sampler.name='cmaes' is invalid"):
        tuning.check_settings({"n_trials": 2, "n_jobs": 1, "study_name": "s", "search_space": SPACE,
                               "sampler": {"name": "cmaes"}})
    with pytest.raises(ExperimentError, match="pruner.name='sometimes' is invalid"):
        tuning.check_settings({"n_trials": 2, "n_jobs": 1, "study_name": "s", "search_space": SPACE,
                               "pruner": {"name": "sometimes"}})
    with pytest.raises(ExperimentError, match="n_trials=0 is invalid"):
        tuning.check_settings({"n_trials": 0, "n_jobs": 1, "study_name": "s", "search_space": SPACE})


def test_search_runs_until_n_trials_finished_and_finds_the_best(tmp_path):
    launched = []

    def launch(batch, first):
        launched.extend(batch)
        return [{"state": "COMPLETE", "value": value_of(o), "test_accuracy": 0.5} for o in batch]

    result = make_search(tmp_path, n_jobs=2).run(["data=mnist_sample"], launch)
    assert len(launched) == 5 and all(o[0] == "data=mnist_sample" for o in launched)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 5
    assert result.best.value == max(t.value for t in result.trials)
    retrain = tuning.retrain_command(result, ["data=mnist_sample"])
    assert retrain.startswith("python -m mnist_exp data=mnist_sample ")
    assert " ".join(result.best.overrides[:2]) in retrain


def test_rerun_resumes_and_only_adds_the_missing_trials(tmp_path):
    def launch(batch, first):
        return [{"state": "COMPLETE", "value": value_of(o)} for o in batch]

    first = make_search(tmp_path, n_trials=3).run([], launch)
    seen = []

    def count(batch, first_index):
        seen.extend(batch)
        return launch(batch, first_index)

    second = make_search(tmp_path, n_trials=5).run([], count)
    assert len(seen) == 2 and second.ran_now == 2
    assert [t.number for t in second.trials] == [0, 1, 2, 3, 4]
    assert [t.params for t in second.trials[:3]] == [t.params for t in first.trials]
    assert make_search(tmp_path, n_trials=5).run([], lambda *a: pytest.fail("ran again")).ran_now == 0


def test_failed_and_pruned_trials(tmp_path):
    outcomes = iter([
        {"state": "FAIL", "reason": "TrainingDiverged: loss became nan at epoch 1"},
        RuntimeError("worker crashed"),
        {"state": "PRUNED", "reason": "pruned after epoch 1"},
        {"state": "COMPLETE", "value": 0.9},
        {"state": "COMPLETE", "value": float("nan")},
        {"state": "COMPLETE", "value": 0.8},
        {"state": "COMPLETE", "value": 0.7},
    ])
    result = make_search(tmp_path, n_trials=4).run([], lambda batch, first: [next(outcomes) for _ in batch])
    states = [t.state for t in result.trials]
    assert states == ["FAIL", "FAIL", "PRUNED", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert result.trials[0].reason.startswith("TrainingDiverged") and "worker crashed" in result.trials[1].reason
    assert result.best.value == 0.9


def test_a_search_that_only_fails_stops(tmp_path):
    result = make_search(tmp_path, n_trials=2, max_failures=3).run(
        [], lambda batch, first: [{"state": "FAIL", "reason": "boom"} for _ in batch]
    )
    assert [t.state for t in result.trials] == ["FAIL"] * 3 and result.best is None
    assert tuning.retrain_command(result, []) is None and "no trial completed" in tuning.format_summary(result, None)


def test_trials_left_running_by_a_dead_sweep_are_failed_and_not_counted(tmp_path):
    """A dead sweep's trial becomes FAIL; a live worker's RUNNING trial counts toward n_trials (it will finish)."""
    search = make_search(tmp_path, n_trials=2)
    study = optuna.create_study(storage=search.storage, study_name="test", direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = study.ask()
    orphan.set_user_attr("owner", f"{socket.gethostname()}:{dead.stdout.strip()}")
    alive = study.ask()
    alive.set_user_attr("owner", tuning.owner())  # this process: still running, must be left alone

    result = search.run([], lambda batch, first: [{"state": "COMPLETE", "value": 0.5} for _ in batch])
    by_number = {t.number: t for t in result.trials}
    assert result.abandoned == [orphan.number]
    assert by_number[orphan.number].state == "FAIL" and "died" in by_number[orphan.number].reason
    assert by_number[alive.number].state == "RUNNING"
    assert sum(t.state == "COMPLETE" for t in result.trials) == 1


def test_direction_mismatch_is_an_error(tmp_path):
    make_search(tmp_path, n_trials=1).run([], lambda b, f: [{"state": "COMPLETE", "value": 1.0}])
    with pytest.raises(ExperimentError, match="was created to maximize, not minimize"):
        make_search(tmp_path, n_trials=1, direction="minimize", metric="val_loss").run([], lambda b, f: [])


def test_reporter_in_a_job_prunes_through_the_shared_storage(tmp_path, monkeypatch):
    search = make_search(tmp_path, n_trials=1, pruner={"name": "threshold", "lower": 0.5})
    pruned = {}

    def job(batch, first):
        # What a worker process does: find its trial from the environment, report, get stopped.
        monkeypatch.setenv(tuning.TRIAL_ENV, str(trial_id(batch[0])))
        reporter = tuning.reporter_from_env()
        reporter(1, {"val_accuracy": 0.7})
        with pytest.raises(RunPruned, match="pruned after epoch 2: val_accuracy=0.3000"):
            reporter(2, {"val_accuracy": 0.3})
        pruned["number"] = reporter.number
        return [{"state": "PRUNED"}]

    result = search.run([], job)
    assert result.trials[0].state == "PRUNED" and pruned["number"] == 0
    intermediate = optuna.load_study(study_name="test", storage=search.storage).trials[0].intermediate_values
    assert intermediate == {1: 0.7, 2: 0.3}


def test_concurrent_slots_do_not_wait_for_each_other(tmp_path):
    events, lock = [], threading.Lock()

    def launch(batch, first):
        (overrides,) = batch
        with lock:
            events.append(("start", first))
        time.sleep(1.0 if first == 0 else 0.05)  # trial 0 is slow, the rest are quick
        with lock:
            events.append(("end", first))
        return [{"state": "COMPLETE", "value": value_of(overrides)}]

    result = make_search(tmp_path, n_trials=6, n_jobs=2).run([], launch, concurrent=True)
    assert sorted(t.number for t in result.trials) == list(range(6)) and result.ran_now == 6
    assert all(t.state == "COMPLETE" for t in result.trials)
    started_before_slow_ended = [i for kind, i in events[: events.index(("end", 0))] if kind == "start"]
    assert len(started_before_slow_ended) == 6, events
