"""Faults during work: many writers on one SQLite store, a full disk, a search killed outright."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

PARALLEL_RUNS = 8
EPOCHS = 3
PER_EPOCH = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")


def test_eight_processes_on_one_sqlite_store_lose_nothing(tmp_path):
    runs_dir = tmp_path / "runs"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mnist_exp", "data=mnist_sample", f"epochs={EPOCHS}", f"seed={seed}",
             "plots=false", f"runs_dir={runs_dir}"],
            cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for seed in range(PARALLEL_RUNS)
    ]
    errors = []
    for process in processes:
        _, stderr = process.communicate(timeout=900)
        if process.returncode != 0:
            errors.append(stderr[-2000:])
    assert not errors, errors
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == PARALLEL_RUNS and all(run.info.status == "FINISHED" for run in runs)
    assert sorted(run.data.params["seed"] for run in runs) == [str(seed) for seed in range(PARALLEL_RUNS)]
    for run in runs:
        for key in PER_EPOCH:
            steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_id, key, steps)
        assert {"test_accuracy", "final_val_accuracy"} <= run.data.metrics.keys()
