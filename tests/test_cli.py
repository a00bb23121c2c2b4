"""The real command line in a subprocess: help, config printing, bad input, a run and sweeps."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.conftest import PROJECT_ROOT, signal_when

pytestmark = pytest.mark.slow


def mnist_exp(*args: str, runs_dir, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mnist_exp", *args, f"runs_dir={runs_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
    )


def store(runs_dir) -> MlflowClient:
    return MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")


def runs_in(runs_dir):
    client = store(runs_dir)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def epochs_recorded(database) -> int:
    """Epochs in the store so far, read with plain sqlite3: an MLflow client would race the run to create tables."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT COUNT(*) FROM metrics WHERE key = 'val_accuracy'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_help_lists_groups_without_importing_tensorflow_or_mlflow(tmp_path):
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mnist_exp", "--help"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout
    assert "data: fashion_mnist, mnist, mnist_sample" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines()}
    assert "hydra" in imported and not {"tensorflow", "keras", "mlflow"} & imported


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = mnist_exp("--cfg", "job", "optimizer=sgd", "epochs=10", runs_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: sgd" in result.stdout and "epochs: 10" in result.stdout and "nesterov: false" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer=foo", "error: optimizer/foo does not exist; choose optimizer from: adam, adamw, rmsprop, sgd"),
        ("epochs=abc", "error: epochs='abc' is invalid: expected an integer from 1 to 100000"),
        ("epochs=0", "error: epochs=0 is invalid"),
        ("batch_size=-1", "error: batch_size=-1 is invalid"),
        ("optimizer.lr=0", "error: optimizer.lr=0 is invalid: expected a number in (0, 10]"),
        ("model.dropout=1.5", "error: model.dropout=1.5 is invalid"),
        ("model.hidden_units=[]", "error: model.hidden_units=[] is invalid"),
        ("model.hidden_units=[64,-1]", "error: model.hidden_units=[64, -1] is invalid"),
        ("model.hidden_units=[100000000]", "error: model.hidden_units=[100000000] is invalid"),
        ("optimizer.lr=abc", "error: optimizer.lr='abc' is invalid"),
        ("mlflow.tracking_uri=foo://bar", "error: mlflow.tracking_uri='foo://bar' is invalid"),
        ("model.hidden_units=[1,", "error: no viable alternative at input '[1,'"),
        ("nosuchkey=1", "error: Could not override 'nosuchkey'."),
        ("data.path=/no/such/mnist.npz", "error: data.path=/no/such/mnist.npz does not exist"),
        ("mlflow.tracking_uri=http://127.0.0.1:9", "error: cannot reach the MLflow tracking server at http://127.0.0.1:9"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run(tmp_path, override, message):
    result = mnist_exp(override, runs_dir=tmp_path / "runs")
    assert result.returncode == 2
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_corrupt_data_file_is_one_line_and_no_run(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"garbage")
    result = mnist_exp(f"data.path={bad}", runs_dir=tmp_path / "runs")
    assert result.returncode == 2 and result.stderr.startswith(f"error: {bad} is not a readable .npz archive")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_one_epoch_run_prints_a_summary_and_records_it(tmp_path):
    runs_dir = tmp_path / "runs"
    result = mnist_exp("data=mnist_sample", "epochs=1", "optimizer=sgd", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The epoch's line, then the summary: no other output (no progress bars after training).
    assert "val_accuracy:" in lines[0] and len(lines) == 4, result.stdout
    assert lines[-3].startswith("val_accuracy ") and "test_accuracy " in lines[-3]
    assert lines[-1].startswith("UI: ") and lines[-1].endswith(f"mlflow ui --backend-store-uri sqlite:///{runs_dir}/mlflow.db")
    run_id = lines[-2].removeprefix("MLflow run ")
    run = store(runs_dir).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("data=mnist_sample epochs=1 optimizer=sgd")
    assert run.data.params["optimizer.name"] == "sgd" and run.data.params["dataset.name"] == "mnist_sample"
    assert [p.step for p in store(runs_dir).get_metric_history(run_id, "val_accuracy")] == [1]
    assert "Traceback" not in result.stderr


def test_multirun_groups_jobs_under_one_parent(tmp_path):
    runs_dir = tmp_path / "runs"
    result = mnist_exp("-m", "optimizer=sgd,adam", "data=mnist_sample", "epochs=1", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr
    runs = runs_in(runs_dir)
    (parent,) = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert {c.data.params["optimizer.name"] for c in children} == {"sgd", "adam"}
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    best = max(children, key=lambda c: c.data.metrics["final_val_accuracy"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    artifacts = {a.path for a in store(runs_dir).list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.json", "sweep_summary.txt", "plots"} <= artifacts
    plots = {a.path for a in store(runs_dir).list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/val_accuracy_by_parameter.png"}
    assert all({a.path for a in store(runs_dir).list_artifacts(c.info.run_id, "plots")} for c in children)
    assert f"best: {best.info.run_id}" in result.stdout
    # One line per finished job (number, overrides, scores, time), then the table.
    done = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if " done: " in line]
    assert len(done) == 2 and all("val_accuracy=" in line for line in done), result.stderr


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    runs_dir = tmp_path / "runs"
    result = mnist_exp("-m", "model.dropout=1.5,0.1", "data=mnist_sample", "epochs=1", runs_dir=runs_dir)
    assert result.returncode == 1
    assert "job 0 failed: model.dropout=1.5 is invalid" in result.stdout + result.stderr
    assert result.stderr.strip().endswith("error: 1 of 2 jobs failed")
    runs = runs_in(runs_dir)
    (parent,) = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "true"]
    children = {
        r.data.params["model.dropout"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert children["0.1"].info.status == "FINISHED"
    assert children["1.5"].info.status == "FAILED"
    assert "model.dropout=1.5 is invalid" in children["1.5"].data.tags["mnist_exp.failure"]
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_failed"] == 1
    assert parent.data.tags["best_child_run_id"] == children["0.1"].info.run_id
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_interrupted_run_is_killed_with_the_epochs_so_far(tmp_path, signal_number):
    runs_dir = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_exp", "data=mnist_sample", "epochs=500", f"runs_dir={runs_dir}"],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stderr = signal_when(process, lambda: epochs_recorded(runs_dir / "mlflow.db") > 0, signal_number, 120,
                         "no epoch was recorded")
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "error: interrupted; the run is recorded as KILLED"
    (run,) = runs_in(runs_dir)
    assert run.info.status == "KILLED"
    epochs = [p.step for p in store(runs_dir).get_metric_history(run.info.run_id, "val_accuracy")]
    assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) < 500
