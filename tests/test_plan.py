"""config.plan: a config checked and resolved once, at the edge of each command."""

from __future__ import annotations

import os

import pytest

from mnist_exp import config
from mnist_exp.config import plan as plan_module
from mnist_exp.config.paths import PROJECT_ROOT
from mnist_exp.config.plan import check_repeats, resolve
from mnist_exp.system.errors import ExperimentError
from mnist_exp.training import model, train
from tests.conftest import write_npz


def test_resolve_derives_what_a_run_reads(make_cfg, tmp_path):
    plan = resolve(make_cfg("optimized_metric=[val_loss,parameters]"))
    assert plan.objectives == ("val_loss", "parameters")
    assert plan.metric == "val_loss" and plan.direction("parameters") == "minimize"
    assert plan.monitored == "val_loss"
    assert plan.runs_dir == tmp_path / "runs"
    assert plan.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert plan.values["optimizer"]["name"] == "rmsprop" and "hydra" not in plan.values

    size_first = resolve(make_cfg("optimized_metric=[parameters,val_accuracy]"))
    assert size_first.monitored == "val_accuracy"


def test_a_relative_runs_dir_is_taken_from_the_project_root(make_cfg):
    assert resolve(make_cfg("runs_dir=elsewhere")).runs_dir == PROJECT_ROOT / "elsewhere"


def test_a_password_in_the_configured_uri_is_taken_once(make_cfg, monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    plan = resolve(make_cfg("mlflow.tracking_uri=postgresql://alice:S3cret@db.example/mlflow"))
    assert plan.tracking_uri == "postgresql://alice:***@db.example/mlflow"
    assert os.environ["PGPASSWORD"] == "S3cret"
    assert "S3cret" not in repr(plan), "nor in the plan's values"


def test_resolve_refuses_what_validate_refuses(make_cfg):
    with pytest.raises(ExperimentError, match=r"^epochs=0 is invalid"):
        resolve(make_cfg("epochs=0"))


@pytest.mark.parametrize(
    ("command", "repeats", "message"),
    [
        ("run", 3, "repeats=3 runs 3 jobs, one per seed: add -m"),
        ("rerun", 2, "repeats=2: a rerun is one run; repeat with python -m mnist_exp -m"),
        ("search", 2, "repeats=2 is for grid sweeps; a search runs each trial once"),
    ],
)
def test_repeats_belong_to_grid_sweeps(make_cfg, command, repeats, message):
    with pytest.raises(ExperimentError, match=f"^{message}$"):
        resolve(make_cfg(f"repeats={repeats}"), command)
    check_repeats(1, command)
    resolve(make_cfg(f"repeats={repeats}"))  # a grid sweep's job: each one of its seeds


def test_a_run_checks_its_config_once_and_builds_one_optimizer(tmp_path, cli_in_process, monkeypatch):
    calls = {"validate": 0, "optimizer": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(plan_module, "validate", counted("validate", config.validate))
    monkeypatch.setattr(config, "validate", counted("validate", config.validate))
    # Both names: train's, and the one an earlier check imported from model to build one and throw it away.
    monkeypatch.setattr(train, "build_optimizer", counted("optimizer", train.build_optimizer))
    monkeypatch.setattr(model, "build_optimizer", counted("optimizer", model.build_optimizer))
    data = write_npz(tmp_path / "mnist.npz")
    code, stdout, stderr = cli_in_process(f"data.path={data}", "epochs=1", "plots=false", "mlflow.log_model=false",
                                          runs_dir=tmp_path / "runs")
    assert code == 0, stderr
    assert "MLflow run " in stdout
    assert calls == {"validate": 1, "optimizer": 1}
