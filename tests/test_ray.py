"""An Optuna search whose trials run as Ray tasks on a real (one-machine) Ray cluster."""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from mnist_exp.multirun import sweeping
from mnist_exp.system.errors import ExperimentError
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
# Ray's token authentication, with the token in the environment of the cluster and its clients, as a user would
# give it (a local Ray that a sweep starts gets one of its own: mnist_exp.multirun.sweeping.keep_ray_token_off_disk).
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


@pytest.mark.fresh_store
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


@pytest.mark.parametrize("address", ["", "  "])
def test_an_empty_cluster_address_is_one_line(address):
    """RAY_ADDRESS= (set, empty) once reached ray.init(address="") and its ValueError traceback."""
    with pytest.raises(ExperimentError, match=r"^the Ray cluster address is empty \(RAY_ADDRESS or "):
        sweeping.check_ray_cluster(ray_launcher(address))
    sweeping.check_ray_cluster(ray_launcher(None))  # unset: a local Ray


def ray_launcher(address=None):
    return OmegaConf.create({"hydra": {"launcher": {
        "_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"init": {"address": address}},
    }}})


@pytest.fixture
def no_ray_token(tmp_path, monkeypatch):
    """A home without ~/.ray, and no Ray variable in the environment; the home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS"):
        # Set first so that monkeypatch restores the variable's absence too: the code under test sets some.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return home


def test_a_local_ray_gets_a_token_that_is_written_nowhere(no_ray_token):
    """Ray itself writes a new token to ~/.ray/auth_token, readable by every user, and leaves it there."""
    sweeping.keep_ray_token_off_disk(ray_launcher())
    assert re.fullmatch("[0-9a-f]{64}", os.environ["RAY_AUTH_TOKEN"])
    assert not (no_ray_token / ".ray").exists()


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_a_token_of_the_user_s_is_used_as_it_is(no_ray_token, caplog, mode):
    token = no_ray_token / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("the-user-s-token")
    token.chmod(mode)
    with caplog.at_level(logging.WARNING):
        sweeping.keep_ray_token_off_disk(ray_launcher())
    assert "RAY_AUTH_TOKEN" not in os.environ and token.read_text() == "the-user-s-token"
    warned = [record.getMessage() for record in caplog.records]
    assert warned == ([] if mode == 0o600 else [
        f"{token}, Ray's authentication token, is readable by other users: chmod 600 {token}"])


def test_a_token_path_naming_no_token_gets_one_in_memory(no_ray_token, monkeypatch):
    """Ray would write a new token over ~/.ray/auth_token, whatever that holds."""
    theirs = no_ray_token / ".ray" / "auth_token"
    theirs.parent.mkdir()
    theirs.write_text("the-user-s-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(no_ray_token / "missing"))
    sweeping.keep_ray_token_off_disk(ray_launcher())
    assert re.fullmatch("[0-9a-f]{64}", os.environ["RAY_AUTH_TOKEN"]) and theirs.read_text() == "the-user-s-token"


@pytest.mark.parametrize("setting", [{"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_TOKEN": "mine"},
                                     {"RAY_ADDRESS": "head:6379"}, {"address": "head:6379"}, {"launcher": "joblib"}])
def test_what_the_user_chose_is_left_to_ray(no_ray_token, monkeypatch, setting):
    config = ray_launcher(setting.get("address"))
    if "launcher" in setting:
        config.hydra.launcher._target_ = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    for name, value in setting.items():
        if name.startswith("RAY_"):
            monkeypatch.setenv(name, value)
    sweeping.keep_ray_token_off_disk(config)
    assert os.environ.get("RAY_AUTH_TOKEN") == setting.get("RAY_AUTH_TOKEN")
    assert not (no_ray_token / ".ray").exists()


def test_a_sweep_on_a_local_ray_writes_no_token_and_authenticates(tmp_path, no_ray_token):
    """A grid sweep that starts Ray on this machine: token authentication on, ~/.ray/auth_token never written."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs pip install -e '.[ray]'")
    # Ray's own folder, short (its socket paths must fit 107 bytes) and its own (no other local Ray is joined).
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_dir:
        result = run_cli("-m", "hydra/launcher=ray_cluster", "optimizer=sgd,adam", "data=mnist_sample", "epochs=1",
                         "plots=false", runs_dir=tmp_path / "runs", env={"RAY_TMPDIR": ray_dir}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Token authentication is enabled for this Ray cluster" in result.stderr + result.stdout
    assert not (no_ray_token / ".ray").exists()
    parent, children = single_sweep(store_client(tmp_path / "runs"))
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 2
