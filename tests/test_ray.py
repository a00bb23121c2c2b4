"""An Optuna search whose trials run as Ray tasks on a real (one-machine) Ray cluster."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.conftest import (
    finish,
    free_port,
    metric_steps,
    owner_pid,
    run_cli,
    single_sweep,
    start_cli,
    store_client,
    wait_until,
)

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).parent / "ray"
# Ray's token authentication, with the token in the environment of the cluster and its clients: without it
# `ray start` writes a token, readable by everyone, to ~/.ray/auth_token and leaves it there.
RAY_TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


def cluster_answers(address: str) -> bool:
    return subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True, timeout=60,
                          env={**os.environ, **RAY_TOKEN}).returncode == 0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-machine Ray cluster on 127.0.0.1 with 2 CPUs; its address.

    `ray start --block` stays in the foreground and stops the processes it started when it is terminated:
    no `ray stop`, which would stop every Ray on the machine.
    """
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install -e '.[ray]'")
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path_factory.mktemp("ray") / "head.log"
    with open(log, "w") as output:
        head = subprocess.Popen(
            [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={address.rsplit(':', 1)[1]}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats"],
            stdout=output, stderr=subprocess.STDOUT, text=True, env={**os.environ, **RAY_TOKEN},
        )
    try:
        wait_until(lambda: cluster_answers(address), 180, f"the Ray cluster at {address} (log: {log})", head)
        yield address
    finally:
        head.terminate()
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            head.kill()


def test_an_optuna_search_runs_its_trials_on_ray(ray_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    sweep = start_cli(
        "-m", "hparams_search=optuna", "hydra/launcher=ray_cluster", "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.name=none", "data=mnist_sample", "epochs=1",
        runs_dir=runs_dir, env={"RAY_ADDRESS": ray_cluster, **RAY_TOKEN},
    )
    result = finish(sweep, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert "Connecting to existing Ray cluster" in output and "Connected to Ray cluster." in output

    study = optuna.load_study(study_name="mnist-mlp-mnist_sample", storage=f"sqlite:///{runs_dir}/optuna.db")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
    client = store_client(runs_dir)
    parent, children = single_sweep(client)
    assert owner_pid(parent) == sweep.pid, "the sweeping process wrote the parent run"
    assert sorted(int(c.data.tags.get("optuna.trial_number", -1)) for c in children) == [0, 1, 2, 3]
    for child in children:
        assert child.info.status == "FINISHED"
        assert metric_steps(client, child.info.run_id, "val_accuracy") == [1]
        trial = study.trials[int(child.data.tags["optuna.trial_number"])]
        assert trial.user_attrs["run_id"] == child.info.run_id
        # Each trial ran in a Ray worker, not in the sweeping process.
        assert owner_pid(child) != owner_pid(parent)


def test_a_grid_sweep_runs_its_jobs_on_ray(ray_cluster, tmp_path):
    runs_dir = tmp_path / "runs"
    sweep = start_cli("-m", "hydra/launcher=ray_cluster", "optimizer=sgd,adam", "data=mnist_sample", "epochs=1",
                      "plots=false", runs_dir=runs_dir, env={"RAY_ADDRESS": ray_cluster, **RAY_TOKEN})
    result = finish(sweep, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = single_sweep(store_client(runs_dir))
    assert sorted(c.data.params["optimizer.name"] for c in children) == ["adam", "sgd"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert owner_pid(parent) == sweep.pid, "the sweeping process wrote the parent run"
    # Each job ran in a Ray worker, not in the sweeping process.
    assert all(owner_pid(child) != owner_pid(parent) for child in children)


def test_an_unreachable_cluster_is_one_line_before_anything_starts(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install -e '.[ray]'")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("-m", "hydra/launcher=ray_cluster", "optimizer=sgd,adam", runs_dir=tmp_path / "runs",
                     env={"RAY_ADDRESS": address}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: cannot reach the Ray cluster at {address} (RAY_ADDRESS or hydra.launcher.ray.init.address)"
    )
    assert not (tmp_path / "runs" / "mlflow.db").exists()
