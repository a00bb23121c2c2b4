"""An Optuna search whose trials run as Ray tasks on a real (one-machine) Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.conftest import PROJECT_ROOT, free_port

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture(scope="module")
def ray_cluster():
    """`ray start --head` on 127.0.0.1 with 2 CPUs; its address. `ray stop` afterwards."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install -e '.[ray]'")
    port = free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def test_an_optuna_search_runs_its_trials_on_ray(ray_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "mnist_exp", "-m", "hparams_search=optuna", "hydra/launcher=ray_cluster",
         "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.name=none",
         "data=mnist_sample", "epochs=1", f"runs_dir={runs_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "RAY_ADDRESS": ray_cluster},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert "Connecting to existing Ray cluster" in output and "Connected to Ray cluster." in output

    study = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=f"sqlite:///{runs_dir}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(c.data.tags.get("optuna.trial_number", -1)) for c in children) == [0, 1, 2, 3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert [p.step for p in client.get_metric_history(child.info.run_id, "val_accuracy")] == [1]
        trial = study.trials[int(child.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["run_id"] == child.info.run_id
        # Each trial ran in a Ray worker, not in the sweeping process.
        assert child.data.tags["mnist_exp.owner"].split(":")[1] != str(os.getpid())


def test_a_grid_sweep_runs_its_jobs_on_ray(ray_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "mnist_exp", "-m", "hydra/launcher=ray_cluster", "optimizer=sgd,adam",
         "data=mnist_sample", "epochs=1", "plots=false", f"runs_dir={runs_dir}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ray_cluster},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{runs_dir}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if r.data.tags.get("mnist_exp.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.params["optimizer.name"] for c in children) == ["adam", "sgd"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"


def test_an_unreachable_cluster_is_one_line_before_anything_starts(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install -e '.[ray]'")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [sys.executable, "-m", "mnist_exp", "-m", "hydra/launcher=ray_cluster", "optimizer=sgd,adam",
         f"runs_dir={tmp_path / 'runs'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": address},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: cannot reach the Ray cluster at {address} (RAY_ADDRESS or hydra.launcher.ray.init.address)"
    )
    assert not (tmp_path / "runs" / "mlflow.db").exists()
