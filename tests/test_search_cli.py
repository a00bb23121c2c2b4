"""`python -m mnist_exp -m hparams_search=...` for real: parallel workers, pruning, failures, resuming."""

from __future__ import annotations

import json
import signal
import subprocess

import optuna
import pytest

from tests.conftest import (
    MODEL_CHOICE_PRESET,
    all_runs,
    artifact_paths,
    child_processes,
    finish,
    finished_trials,
    interrupt_two_training_jobs,
    living,
    metric_steps,
    owner_pid,
    run_cli,
    runs_with_an_epoch,
    search_preset,
    signal_when,
    start_cli,
    store_client,
    sweep_parents_and_children,
    wait_until,
    write_npz,
)

pytestmark = pytest.mark.slow


def search(*args: str, runs_dir) -> subprocess.CompletedProcess:
    return run_cli("-m", *args, "data=mnist_sample", runs_dir=runs_dir)


def search_here(cli_in_process, *args: str, runs_dir) -> subprocess.CompletedProcess:
    """`search` in this process (cli_in_process): for a search about what it records and prints, not about its
    process (the others here are)."""
    return subprocess.CompletedProcess([], *cli_in_process("-m", *args, "data=mnist_sample", runs_dir=runs_dir))


def sweep_runs(runs_dir):
    client = store_client(runs_dir)
    return (client, *sweep_parents_and_children(client))


GRID_WITH_HOPELESS_TRIALS = """\
# @package _global_
# Half the grid learns nothing in an epoch (lr 1e-7), half learns fast: whichever points the grid draws
# first, a threshold of 0.4 after epoch 1 prunes some trials and lets others complete.
defaults:
  - override /hydra/sweeper: mnist_optuna
hydra:
  sweeper:
    study_name: hopeless
    sampler: {name: grid, seed: 0}
    pruner: {name: threshold, lower: 0.4}
    search_space:
      optimizer.lr: {type: categorical, choices: [1.0e-7, 1.0e-3]}
      batch_size: {type: categorical, choices: [64, 128, 256]}
"""


def test_parallel_search_with_pruning_then_resume(tmp_path):
    runs_dir = tmp_path / "runs"
    common = ["hparams_search=hopeless", search_preset(tmp_path, "hopeless", GRID_WITH_HOPELESS_TRIALS), "epochs=2",
              "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]
    first = search(*common, "hydra.sweeper.n_trials=4", runs_dir=runs_dir)
    assert first.returncode == 0, first.stderr[-3000:]

    study = optuna.load_study(study_name="hopeless", storage=f"sqlite:///{runs_dir}/optuna.db")
    states = {t.number: t.state.name for t in study.trials}
    assert len(states) == 4 and set(states.values()) == {"COMPLETE", "PRUNED"}, states
    assert all((t.state.name == "PRUNED") == (t.params["optimizer.lr"] == 1e-7) for t in study.trials)
    client, (parent,), children = sweep_runs(runs_dir)
    trials = children[parent.info.run_id]
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in trials) == [0, 1, 2, 3]
    for child in trials:
        trial = study.trials[int(child.data.tags["optuna.trial_number"])]
        assert child.data.tags["mnist_exp.state"] == trial.state.name and child.info.status == "FINISHED"
        epochs = metric_steps(client, child.info.run_id, "val_accuracy")
        assert epochs == ([1] if trial.state.name == "PRUNED" else [1, 2])
        assert "plots" not in artifact_paths(client, child.info.run_id), "a trial's pictures only when asked"

    best = study.best_trial
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best_trial_number"] == str(best.number)
    assert parent.data.tags["best_child_run_id"] == best.user_attrs["run_id"], "never a pruned run"
    assert parent.data.tags["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    assert "best_trial_test_accuracy" in parent.data.metrics
    artifacts = artifact_paths(client, parent.info.run_id)
    plots = artifact_paths(client, parent.info.run_id, "plots")
    assert "optuna_trials.json" in artifacts and "plots/optimization_history.png" in plots
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "optuna_trials.json")).read())
    assert len(table["data"]) == 4
    assert f"best trial {best.number}: val_accuracy={best.value:.4f}" in first.stdout
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    best_run = next(c for c in trials if c.data.tags["optuna.trial_number"] == str(best.number))
    # The best trial's run, trained again from its recorded config, in the store the search wrote to.
    retrain = f"python -m mnist_exp.rerun {best_run.info.run_id} --tracking-uri sqlite:///{runs_dir}/mlflow.db"
    assert f"retrain: {retrain}\n" in first.stdout and parent.data.tags["retrain_command"] == retrain
    assert str(champion.version) == "1" and champion.run_id == best_run.info.run_id
    assert "registered models:/mnist-mlp@champion (version 1)" in first.stdout

    assert first.stdout.startswith(f"New study hopeless (sqlite:///{runs_dir}/optuna.db): 4 trials to run; "
                                   f"MLflow parent run {parent.info.run_id}\n")
    assert parent.data.tags["optuna.study_name"] == "hopeless"
    # The grid runs the baseline's point (lr 1e-3, batch 128: the config without the space) as one of its own.
    baseline = next((t for t in study.trials if t.params == {"optimizer.lr": 1e-3, "batch_size": 128}), None)
    if baseline is not None:
        assert f"baseline trial {baseline.number} " in first.stdout

    # One study, one parent run: the resumed search adds its trial there, and the parent describes all five.
    second = search(*common, "hydra.sweeper.n_trials=5", "plots=true", runs_dir=runs_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="hopeless", storage=f"sqlite:///{runs_dir}/optuna.db")
    assert len(study.trials) == 5 and "1 run by this sweep" in second.stdout
    assert second.stdout.startswith(
        f"Resuming study hopeless (sqlite:///{runs_dir}/optuna.db): it holds 4 finished trials "
        f"({states_held(states)}), 0 FAIL; 1 more to reach n_trials=5; MLflow parent run {parent.info.run_id}\n")
    client, (resumed,), children = sweep_runs(runs_dir)
    assert resumed.info.run_id == parent.info.run_id and resumed.info.status == "FINISHED"
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children[parent.info.run_id]) == [0, 1, 2, 3, 4]
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "optuna_trials.json")).read())
    assert sorted(row[table["columns"].index("trial")] for row in table["data"]) == [0, 1, 2, 3, 4]
    assert resumed.data.tags["best_trial_number"] == str(study.best_trial.number)


def states_held(states: dict[int, str]) -> str:
    counts = list(states.values())
    return f"{counts.count('COMPLETE')} COMPLETE, {counts.count('PRUNED')} PRUNED"


GRID_WITH_A_DIVERGING_TRIAL = """\
# @package _global_
defaults:
  - override /hydra/sweeper: mnist_optuna
  - override /optimizer: sgd
model:
  hidden_units: [512, 512]
  activation: linear   # with lr=10 the loss overflows to nan in the first epoch
hydra:
  sweeper:
    study_name: diverge
    n_trials: 2
    sampler: {name: grid, seed: 0}
    pruner: {name: none}
    search_space:
      optimizer.lr: {type: categorical, choices: [10.0, 0.01]}
"""


def test_a_diverging_trial_fails_and_the_search_goes_on(tmp_path, cli_in_process):
    runs_dir = tmp_path / "runs"
    preset = search_preset(tmp_path, "diverge", GRID_WITH_A_DIVERGING_TRIAL)
    result = search_here(cli_in_process, "hparams_search=diverge", preset, "epochs=1", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="diverge", storage=f"sqlite:///{runs_dir}/optuna.db")
    by_lr = {t.params["optimizer.lr"]: t for t in study.trials}
    assert by_lr[10.0].state.name == "FAIL" and "loss became" in by_lr[10.0].user_attrs["fail_reason"]
    assert by_lr[0.01].state.name == "COMPLETE"
    _, (parent,), children = sweep_runs(runs_dir)
    statuses = {c.data.params["optimizer.lr"]: c.info.status for c in children[parent.info.run_id]}
    assert statuses == {"10.0": "FAILED", "0.01": "FINISHED"}
    assert parent.info.status == "FINISHED"


LAYER_KEYS = {"mlp": "model.hidden_units", "cnn": "model.filters"}


def test_a_search_chooses_between_models_and_each_trial_has_its_models_keys_only(tmp_path, cli_in_process):
    preset = search_preset(tmp_path, "two_models", MODEL_CHOICE_PRESET)
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir(exist_ok=True)
    # Both models for certain, whatever the sampler draws: a CNN queued first, then the baseline (the default MLP).
    storage = f"sqlite:///{runs_dir}/optuna.db"
    optuna.create_study(study_name="models", storage=storage, direction="maximize").enqueue_trial({"model": "cnn"})
    result = search_here(cli_in_process, "hparams_search=two_models", preset, "epochs=1", "hydra.sweeper.n_trials=2",
                         runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="models", storage=storage)
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials.values())
    assert {t.params["model"] for t in trials.values()} == {"mlp", "cnn"}
    assert trials[1].params == {"model": "mlp", "model.hidden_units.layers": 1, "model.hidden_units.width_1": 512,
                                "model.dropout": 0.0}, "the baseline: the default MLP, none of the CNN's keys"
    _, (parent,), children = sweep_runs(runs_dir)
    runs = {int(c.data.tags["optuna.trial_number"]): c for c in children[parent.info.run_id]}
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("trial ")))
    table = {int(line.split()[0]): line.split()[4] for line in lines[header + 1: header + 3]}
    for number, trial in trials.items():
        model = trial.params["model"]
        own, other = LAYER_KEYS[model], LAYER_KEYS["cnn" if model == "mlp" else "mlp"]
        assert f"{own}.layers" in trial.params and not any(key.startswith(other) for key in trial.params)
        assert runs[number].data.params["model.name"] == model and own in runs[number].data.params
        assert table[number] == model and trial.user_attrs["model"] == model
    # The champion is registered under its own model's name, not the one the command composed (mlp).
    assert f"registered models:/mnist-{study.best_trial.params['model']}@champion" in result.stdout


@pytest.mark.fresh_store
def test_a_search_refuses_repeats_in_one_line(tmp_path):
    runs_dir = tmp_path / "runs"
    result = search("hparams_search=optuna", "repeats=2", runs_dir=runs_dir)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: repeats=2 is for grid sweeps; a search runs each trial once"
    assert not (runs_dir / "mlflow.db").exists() and not (runs_dir / "optuna.db").exists()


STUDY = "mnist-mlp-mnist"  # hparams_search=optuna's study on data=mnist (a data.path of tiny digits)


@pytest.mark.xdist_group("search_interrupts")  # three long tests that share nothing with the module's others
@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "sigterm", "sigkill"])
def test_interrupted_search_resumes_to_exactly_n_trials(tmp_path, signal_number):
    """Ctrl-C, `kill`, or SIGKILL (nothing can clean up) once a trial has finished, wherever the search is then
    (in a trial, asking for the next, telling a result); the same command again finishes the study."""
    runs_dir = tmp_path / "runs"
    storage = f"sqlite:///{runs_dir}/optuna.db"
    # The tiny digits: a trial of 100 epochs lasts seconds, long enough to be in flight when the signal comes.
    command = ["-m", "hparams_search=optuna", f"data.path={write_npz(tmp_path / 'mnist.npz')}", "epochs=100",
               "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none"]
    process = start_cli(*command, runs_dir=runs_dir, stdout=subprocess.DEVNULL)
    one_finished = lambda: finished_trials(runs_dir / "optuna.db", STUDY) >= 1  # noqa: E731
    stderr = signal_when(process, one_finished, signal_number, 180, "a finished trial")
    assert process.returncode == (-signal.SIGKILL if signal_number == signal.SIGKILL else 130), stderr[-3000:]
    interrupted = optuna.load_study(study_name=STUDY, storage=storage).trials
    done_before = [t.number for t in interrupted if t.state.name == "COMPLETE"]
    others = [t.state.name for t in interrupted if t.state.name != "COMPLETE"]
    if signal_number == signal.SIGKILL:
        assert others in ([], ["RUNNING"]), others  # left for the next start to find
    else:
        assert others in ([], ["FAIL"]), others  # the trial in flight, if there was one, ended at once
    assert len(done_before) == 1
    client, parents, _ = sweep_runs(runs_dir)
    if signal_number != signal.SIGKILL:
        assert not [r for r in all_runs(client) if r.info.status == "RUNNING"], "nothing left RUNNING"
        assert [p.info.status for p in parents] == ["KILLED"]

    rerun = run_cli(*command, runs_dir=runs_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert [t.number for t in trials if t.state.name == "COMPLETE"][: len(done_before)] == done_before
    reason = "its sweep process died" if signal_number == signal.SIGKILL else "interrupted (Ctrl-C or SIGTERM)"
    assert all(t.user_attrs["fail_reason"] == reason for t in trials if t.state.name == "FAIL")
    client, (resumed,), _ = sweep_runs(runs_dir)  # the study's one parent run, FINISHED by the search that ended it
    assert not [r for r in all_runs(client) if r.info.status == "RUNNING"]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["optuna.study_name"] == STUDY


def test_independent_searches_on_one_storage_share_one_study(tmp_path):
    """Two `python -m mnist_exp -m hparams_search=...` processes, one study: no trial twice, none lost."""
    runs_dir = tmp_path / "runs"
    storage = f"sqlite:///{tmp_path / 'shared-optuna.db'}"
    command = ["-m", "hparams_search=optuna", "data=mnist_sample", "epochs=1", "hydra.sweeper.n_trials=6",
               "hydra.sweeper.pruner.name=none", f"hydra.sweeper.storage={storage}"]
    workers = [start_cli(*command, runs_dir=runs_dir) for _ in range(2)]
    outputs = [finish(worker) for worker in workers]
    if [o.returncode for o in outputs] != [0, 0]:  # the whole of stderr: an assertion's message is cut short
        pytest.fail("\n\n".join(f"exit {o.returncode}:\n{o.stderr[-6000:]}" for o in outputs))
    # Only the worker that created the study says so (once both did: each saw a study without trials).
    assert sorted(o.stdout.split(" ", 2)[:2] for o in outputs) == [["New", "study"], ["Resuming", "study"]]

    trials = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=storage).trials
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 6
    client, (parent,), children = sweep_runs(runs_dir)  # one study, one parent run, whoever ran its trials
    runs = children[parent.info.run_id]
    assert {owner_pid(run) for run in runs} == {worker.pid for worker in workers}, "each worker ran trials"
    numbers = [int(run.data.tags["optuna.trial_number"]) for run in runs]
    assert sorted(numbers) == [t.number for t in trials], "every trial exactly once in MLflow"
    assert {t.user_attrs["run_id"] for t in trials} == {run.info.run_id for run in runs}
    assert sum(bool(t.user_attrs.get("mnist_exp.baseline")) for t in trials) == 1, "one baseline, not one a worker"
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study_name"] == "mnist-mlp-mnist_sample"


JOBLIB_SEARCH = ["-m", "hparams_search=optuna", "data=mnist_sample", "hydra/launcher=joblib",
                 "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none"]


def test_sigterm_to_a_joblib_search_kills_its_trials_runs_within_seconds(tmp_path):
    """`kill` reaches only the sweeping process; before, its workers trained on (43 s) or were killed by
    loky's shutdown with their runs RUNNING, and the trials' runs that noticed ended FAILED."""
    runs_dir = tmp_path / "runs"
    process = start_cli(*JOBLIB_SEARCH, "epochs=500", runs_dir=runs_dir, stdout=subprocess.DEVNULL)
    stderr, seconds, _ = interrupt_two_training_jobs(process, runs_dir, lambda: process.send_signal(signal.SIGTERM))
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-3000:]
    assert seconds <= 30, f"{seconds:.0f} s from SIGTERM to the exit"
    trials = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=f"sqlite:///{runs_dir}/optuna.db").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    assert {t.user_attrs["fail_reason"] for t in trials} == {"interrupted (Ctrl-C or SIGTERM)"}
    _, (parent,), children = sweep_runs(runs_dir)
    assert parent.info.status == "KILLED"
    assert sorted(c.info.status for c in children[parent.info.run_id]) == ["KILLED", "KILLED"]


def test_sigkill_of_a_joblib_search_leaves_no_worker_and_the_rerun_completes(tmp_path):
    """Before, the workers trained on for minutes (1.8 GB) after their sweeping process was killed, and
    clashed with the resumed search."""
    runs_dir = tmp_path / "runs"
    process = start_cli(*JOBLIB_SEARCH, "epochs=500", runs_dir=runs_dir, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: runs_with_an_epoch(runs_dir) >= 2, 300, "both trials training", process=process)
        workers = child_processes(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    wait_until(lambda: not living(workers), 60, f"the workers {workers} of the killed search to exit")
    client = store_client(runs_dir)
    trial_runs = [r for r in all_runs(client) if r.data.tags.get("mnist_exp.sweep") != "true"]
    assert sorted(r.info.status for r in trial_runs) == ["KILLED", "KILLED"], "each worker ended its run"

    rerun = run_cli(*JOBLIB_SEARCH, "epochs=2", runs_dir=runs_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=f"sqlite:///{runs_dir}/optuna.db").trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert all(t.user_attrs["fail_reason"] == "its sweep process died" for t in trials if t.state.name == "FAIL")
    assert not [r for r in all_runs(store_client(runs_dir)) if r.info.status == "RUNNING"]


def test_a_search_of_accuracy_against_size_keeps_its_pareto_front_in_the_parent(tmp_path, cli_in_process):
    """Two objectives: a column each, `*` on the front, the front as a table, a plot and run tags, and the
    champion alias on the front's most accurate trial (the first objective)."""
    runs_dir = tmp_path / "runs"
    result = search_here(cli_in_process, "hparams_search=optuna", "epochs=1",
                         "optimized_metric=[val_accuracy,parameters]", "hydra.sweeper.n_trials=3",
                         "hydra.sweeper.pruner.name=none", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=f"sqlite:///{runs_dir}/optuna.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "parameters"]
    front = {t.number for t in study.best_trials}
    client, (parent,), children = sweep_runs(runs_dir)
    runs = {int(c.data.tags["optuna.trial_number"]): c for c in children[parent.info.run_id]}
    for number, run in runs.items():
        trial = study.trials[number]
        assert trial.values == [run.data.metrics["val_accuracy"], run.data.metrics["parameters"]]
        assert run.data.tags["optuna.pareto_front"] == str(number in front).lower()
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "pareto_front.json")).read())
    assert sorted(row[table["columns"].index("trial")] for row in table["data"]) == sorted(front)
    assert {"plots/pareto_front.png", "plots/pareto_front.html"} <= artifact_paths(client, parent.info.run_id, "plots")
    assert parent.data.metrics["pareto_front_size"] == len(front)
    most_accurate = max(front, key=lambda number: study.trials[number].values[0])
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert champion.run_id == runs[most_accurate].info.run_id
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("trial "))
    assert header.split()[:5] == ["trial", "state", "val_accuracy", "parameters", "front"]
    assert "Pareto front (val_accuracy up, parameters down): trials " in result.stdout
    assert f"best trial {most_accurate} (the front's best val_accuracy, the first objective): " in result.stdout
