"""The real command line in a subprocess: help, config printing, bad input, a run and sweeps."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from tests.conftest import (
    all_runs,
    artifact_paths,
    count_read_only,
    epochs_recorded,
    finish,
    interrupt_two_training_jobs,
    living,
    metric_steps,
    owner_pid,
    run_cli,
    signal_when,
    single_sweep,
    start_cli,
    store_client,
    wait_until,
    write_npz,
)

pytestmark = pytest.mark.slow


def test_help_lists_groups_without_importing_tensorflow_or_mlflow():
    result = run_cli("--help", runs_dir=None, python_options=("-X", "importtime"), timeout=60)
    assert result.returncode == 0
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout
    assert "data: fashion_mnist, mnist, mnist_sample" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert "hydra" in imported and not {"tensorflow", "keras", "mlflow"} & imported


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli("--cfg", "job", "optimizer=sgd", "epochs=10", runs_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: sgd" in result.stdout and "epochs: 10" in result.stdout and "nesterov: false" in result.stdout


@pytest.mark.fresh_store
@pytest.mark.parametrize(("override", "message"), [  # one of our checks, one of Hydra's parser
    ("epochs=0", "error: epochs=0 is invalid"), ("model.hidden_units=[1,", "error: no viable alternative at input"),
])
def test_bad_input_in_the_real_command_is_one_line_exit_2_and_no_run(tmp_path, override, message):
    """The in-process cases of test_cli_errors.py, through a real process: exit code, stderr, nothing written."""
    result = run_cli(override, runs_dir=tmp_path / "runs")
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.fresh_store
def test_corrupt_data_file_is_one_line_and_no_run(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"garbage")
    result = run_cli(f"data.path={bad}", runs_dir=tmp_path / "runs")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bad} is not a readable .npz archive")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_one_epoch_run_prints_a_summary_and_records_it(tmp_path):
    runs_dir = tmp_path / "runs"
    result = run_cli("data=mnist_sample", "epochs=1", "optimizer=sgd", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The epoch's line, then the summary: no other output (no progress bars after training).
    assert "val_accuracy:" in lines[0] and len(lines) == 4, result.stdout
    assert lines[-3].startswith("val_accuracy ") and "test_accuracy " in lines[-3]
    assert lines[-1].startswith("UI: ") and lines[-1].endswith(f"mlflow ui --backend-store-uri sqlite:///{runs_dir}/mlflow.db")
    run_id = lines[-2].removeprefix("MLflow run ")
    client = store_client(runs_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("data=mnist_sample epochs=1 optimizer=sgd")
    assert run.data.params["optimizer.name"] == "sgd" and run.data.params["dataset.name"] == "mnist_sample"
    assert metric_steps(client, run_id, "val_accuracy") == [1]
    assert "Traceback" not in result.stderr


def sweep_table(stdout: str) -> list[list[str]]:
    """The rows (cells split on blanks) of the table a grid sweep prints, header first."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.split()[:2] == ["state", "val_acc"])
    rows = []
    for line in lines[first:]:
        if not line.strip() or line.startswith(("best: ", "UI: ")):
            break
        rows.append(line.split())
    return rows


def test_multirun_groups_jobs_under_one_parent(tmp_path, cli_in_process, caplog):
    """In this process (the other sweeps here run the real one): the parent, its table, one line per job."""
    runs_dir = tmp_path / "runs"
    with caplog.at_level(logging.INFO, logger="mnist_exp"):
        code, stdout, stderr = cli_in_process("-m", "optimizer=sgd,adam", "data=mnist_sample", "epochs=1",
                                              runs_dir=runs_dir)
    result = subprocess.CompletedProcess([], code, stdout, stderr + caplog.text)
    assert result.returncode == 0, result.stderr
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    assert len(all_runs(client)) == 3 and len(children) == 2
    assert {c.data.params["optimizer.name"] for c in children} == {"sgd", "adam"}
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert parent.data.tags["mnist_exp.state"] == "COMPLETE"
    best = max(children, key=lambda c: c.data.metrics["final_val_accuracy"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert {"sweep_summary.json", "sweep_summary.txt", "plots"} <= artifact_paths(client, parent.info.run_id)
    assert artifact_paths(client, parent.info.run_id, "plots") == {"plots/val_accuracy_by_parameter.png"}
    assert all(artifact_paths(client, c.info.run_id, "plots") for c in children)
    assert f"best: {best.info.run_id}" in result.stdout
    # The table: a state column, best first.
    header, *rows = sweep_table(result.stdout)
    assert header == ["state", "val_acc", "test_acc", "model", "run", "id", "overrides"]
    assert [row[0] for row in rows] == ["COMPLETE", "COMPLETE"] and rows[0][4] == best.info.run_id
    assert [row[3] for row in rows] == ["mlp", "mlp"]
    # One line per finished job (number, overrides, scores, time), then the table.
    done = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if " done: " in line]
    assert len(done) == 2 and all("val_accuracy=" in line for line in done), result.stderr


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    """The sweeping process alone creates and ends the parent run, after the last job, and leaves nothing RUNNING."""
    runs_dir = tmp_path / "runs"
    sweep = start_cli("-m", "model.dropout=1.5,0.1", "data=mnist_sample", "epochs=1", runs_dir=runs_dir)
    result = finish(sweep)
    assert result.returncode == 1
    assert "job 0 failed: model.dropout=1.5 is invalid" in result.stdout + result.stderr
    assert result.stderr.strip().endswith("error: 1 of 2 jobs failed")
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    by_dropout = {child.data.params["model.dropout"]: child for child in children}
    assert by_dropout["0.1"].info.status == "FINISHED" and by_dropout["0.1"].data.tags["mnist_exp.state"] == "COMPLETE"
    assert by_dropout["1.5"].info.status == "FAILED" and by_dropout["1.5"].data.tags["mnist_exp.state"] == "FAIL"
    assert "model.dropout=1.5 is invalid" in by_dropout["1.5"].data.tags["mnist_exp.failure"]
    # One job finished, so the parent did (multirun.MultirunParent._end).
    assert parent.info.status == "FINISHED" and parent.data.tags["mnist_exp.state"] == "COMPLETE"
    assert parent.data.metrics["jobs_failed"] == 1
    assert parent.data.tags["best_child_run_id"] == by_dropout["0.1"].info.run_id
    assert owner_pid(parent) == sweep.pid, "the sweeping process wrote the parent run"
    assert parent.info.end_time >= max(child.info.end_time for child in children), "closed after its jobs"
    assert not [run for run in all_runs(client) if run.info.status == "RUNNING"]
    # The summary artifact is the table the sweep printed: best first, the failed job last.
    summary = open(client.download_artifacts(parent.info.run_id, "sweep_summary.txt")).read()
    assert [line.split() for line in summary.splitlines()] == sweep_table(result.stdout)
    assert [row[0] for row in sweep_table(result.stdout)[1:]] == ["COMPLETE", "FAIL"]
    assert "Traceback" not in result.stderr


def test_a_sweep_whose_jobs_all_fail_ends_its_parent_failed(tmp_path, cli_in_process):
    """One job refused before training (bad value), one failed during it (diverged): no job finished. (In this
    process: what a sweep's real process prints and logs, the other tests here check.)"""
    runs_dir = tmp_path / "runs"
    code, stdout, stderr = cli_in_process(
        "-m", "model.dropout=1.5,0.0", "optimizer=sgd", "optimizer.lr=10.0", "model.activation=linear",
        "model.hidden_units=[512,512]", "data=mnist_sample", "epochs=1", "plots=false", runs_dir=runs_dir,
    )
    result = subprocess.CompletedProcess([], code, stdout, stderr)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().endswith("error: 2 of 2 jobs failed")
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    by_dropout = {child.data.params["model.dropout"]: child for child in children}
    assert {key: child.info.status for key, child in by_dropout.items()} == {"1.5": "FAILED", "0.0": "FAILED"}
    assert by_dropout["0.0"].data.tags["mnist_exp.failure"].startswith("TrainingDiverged: loss became ")
    assert parent.info.status == "FAILED" and parent.data.tags["mnist_exp.state"] == "FAIL"
    assert parent.data.metrics["jobs_failed"] == 2 and "best_child_run_id" not in parent.data.tags
    assert "sweep_summary.txt" in artifact_paths(client, parent.info.run_id)
    assert [row[0] for row in sweep_table(result.stdout)[1:]] == ["FAIL", "FAIL"]
    assert "best: " not in result.stdout
    assert not [run for run in all_runs(client) if run.info.status == "RUNNING"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupted_run_is_killed_with_the_epochs_so_far(tmp_path, signal_number):
    runs_dir = tmp_path / "runs"
    process = start_cli("data=mnist_sample", "epochs=500", runs_dir=runs_dir)
    stderr = signal_when(process, lambda: epochs_recorded(runs_dir) > 0, signal_number, 120,
                         "an epoch in the store")
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted; the run is recorded as KILLED"
    client = store_client(runs_dir)
    (run,) = all_runs(client)
    assert run.info.status == "KILLED"
    epochs = metric_steps(client, run.info.run_id, "val_accuracy")
    assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) < 500


@pytest.mark.parametrize("group", [False, True], ids=["kill", "ctrl-c-in-a-terminal"])
def test_an_interrupted_joblib_sweep_ends_every_run_killed_and_leaves_no_worker(tmp_path, group):
    """`kill` reaches only the sweeping process; Ctrl-C in a terminal reaches its workers too. Before,
    joblib's Parallel took the interrupt in the sweeping process and terminated its workers, whose runs
    stayed RUNNING until the next start marked them KILLED."""
    runs_dir = tmp_path / "runs"
    # Three jobs, two workers: the third, queued when the signal comes, must not start a run.
    process = start_cli("-m", "optimizer=sgd,adam,rmsprop", "data=mnist_sample", "epochs=500", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", runs_dir=runs_dir, stdout=subprocess.DEVNULL,
                        process_group=group)
    send = (lambda: os.killpg(process.pid, signal.SIGINT)) if group else (lambda: process.send_signal(signal.SIGTERM))
    stderr, seconds, workers = interrupt_two_training_jobs(process, runs_dir, send)
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted; the run is recorded as KILLED", stderr[-3000:]
    assert seconds <= 30, f"{seconds:.0f} s from the signal to the exit"
    parent, children = single_sweep(store_client(runs_dir))
    assert parent.info.status == "KILLED"
    assert [c.info.status for c in children] == ["KILLED", "KILLED"]
    wait_until(lambda: not living(workers), 60, f"the workers {workers} of the stopped sweep to exit")


def finished_children(runs_dir) -> int:
    """FINISHED child runs in a runs_dir's store so far."""
    return count_read_only(runs_dir / "mlflow.db",
                           "SELECT COUNT(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                           "WHERE tags.key = 'mlflow.parentRunId' AND runs.status = 'FINISHED'")


def test_a_sweep_killed_outright_is_finished_by_the_same_command_each_job_once(tmp_path):
    """SIGKILL after the first job, then the same command: the jobs that FINISHED are not run again, the
    others are, and the one parent run counts every job of the sweep once. Each job runs `repeats` times."""
    runs_dir = tmp_path / "runs"
    command = ("-m", "optimizer=sgd,adam", "repeats=2", "data=mnist_sample", "epochs=1", "plots=false")
    first = start_cli(*command, runs_dir=runs_dir)
    signal_when(first, lambda: finished_children(runs_dir) >= 1, signal.SIGKILL, 600, "a job to finish")
    finished_before = finished_children(runs_dir)

    second = run_cli(*command, runs_dir=runs_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    assert parent.info.status == "FINISHED" and parent.data.tags["mnist_exp.state"] == "COMPLETE"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert Counter(c.data.tags["mnist_exp.config_digest"] for c in finished).most_common(1)[0][1] == 1, \
        "no config FINISHED twice"
    assert sorted((c.data.params["optimizer.name"], c.data.params["seed"]) for c in finished) == [
        ("adam", "42"), ("adam", "43"), ("sgd", "42"), ("sgd", "43")], "each job, once per seed"
    assert sum(owner_pid(c) == first.pid for c in finished) == finished_before, "what finished was not run again"
    assert (second.stdout + second.stderr).count("FINISHED in this sweep before") == finished_before
    assert not [run for run in all_runs(client) if run.info.status == "RUNNING"]
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "sweep_summary.json")).read())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(rows) == 4 and {row["state"] for row in rows} == {"COMPLETE"}
    assert "Sweep " + parent.info.run_id + ": 4 jobs" in second.stdout


def test_a_sweep_with_a_failed_job_is_finished_by_the_same_command(tmp_path, cli_in_process):
    """The failed job runs again (its data file now exists), the finished one does not; the parent's table
    and jobs_failed count each job once, by its best attempt. (Both commands in this process.)"""
    runs_dir, late = tmp_path / "runs", tmp_path / "late.npz"
    command = ("-m", f"data.path={write_npz(tmp_path / 'early.npz')},{late}", "epochs=1", "plots=false",
               "mlflow.log_model=false")
    first = subprocess.CompletedProcess([], *cli_in_process(*command, runs_dir=runs_dir))
    assert first.returncode == 1 and first.stderr.strip().endswith("error: 1 of 2 jobs failed"), first.stderr
    write_npz(late)

    second = subprocess.CompletedProcess([], *cli_in_process(*command, runs_dir=runs_dir))
    assert second.returncode == 0, second.stderr[-3000:]
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    by_state = Counter((c.data.params["data.path"].rsplit("/", 1)[1], c.info.status) for c in children)
    assert by_state == {("early.npz", "FINISHED"): 1, ("late.npz", "FAILED"): 1, ("late.npz", "FINISHED"): 1}
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 0
    assert [row[0] for row in sweep_table(second.stdout)[1:]] == ["COMPLETE", "COMPLETE"]


def test_ctrl_c_pressed_again_and_again_keeps_exit_130_and_the_run_killed(tmp_path):
    """Signals at every poll from the first one until the process is gone: before, a second Ctrl-C while
    Python shut down ended it by SIGINT (-2), or printed a traceback from a finalizer."""
    runs_dir = tmp_path / "runs"
    process = start_cli("data=mnist_sample", "epochs=500", runs_dir=runs_dir)
    wait_until(lambda: epochs_recorded(runs_dir) > 0, 180, "an epoch in the store", process=process)
    first_signal = time.monotonic()

    def interrupted_again() -> bool:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        return process.poll() is not None

    try:
        wait_until(interrupted_again, 120, "the interrupted run to exit")
        seconds = time.monotonic() - first_signal
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "error: interrupted; the run is recorded as KILLED"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert seconds <= 30, f"{seconds:.0f} s from the first signal to the exit"
    (run,) = all_runs(store_client(runs_dir))
    assert run.info.status == "KILLED"


@pytest.mark.fresh_store
def test_a_sweep_shows_each_jobs_config_and_flags_may_follow_the_overrides(tmp_path):
    import yaml

    # Once a 12-line Hydra traceback (-m with --cfg), and an 8-line usage block (flags after an override).
    result = run_cli("optimizer=sgd,adam", "-m", "--cfg", "job", "epochs=3", runs_dir=tmp_path / "runs")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    jobs = list(yaml.safe_load_all(result.stdout))
    assert [(job["optimizer"]["name"], job["epochs"]) for job in jobs] == [("sgd", 3), ("adam", 3)]
    presets = run_cli("experiment=[classic_mnist,fashion_mnist_best]", runs_dir=tmp_path / "runs")
    assert presets.returncode == 2 and presets.stderr.startswith(
        "error: experiment=[classic_mnist,fashion_mnist_best]: experiment takes one preset"), presets.stderr
    assert len(presets.stderr.splitlines()) == 1
    flags = run_cli("-m", "--run", runs_dir=tmp_path / "runs")
    assert flags.returncode == 2 and flags.stderr == (
        "error: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified\n")
    assert not (tmp_path / "runs").exists()
