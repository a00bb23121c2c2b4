"""Config composition for every group option, and the validation of values."""

from __future__ import annotations

import pytest

from mnist_exp import config
from mnist_exp.errors import ExperimentError


def test_defaults_are_the_classic_keras_mnist_mlp(make_cfg):
    cfg = make_cfg()
    config.validate(cfg)
    assert cfg.optimizer.name == "rmsprop" and cfg.optimizer.lr == 0.001
    assert list(cfg.model.hidden_units) == [512] and cfg.model.activation == "relu" and cfg.model.dropout == 0
    assert (cfg.epochs, cfg.batch_size) == (5, 128)
    assert cfg.data.name == "mnist" and cfg.data.allow_fallback is True


@pytest.mark.parametrize("optimizer", config.OPTIMIZERS)
def test_every_optimizer_composes_and_validates(make_cfg, optimizer):
    cfg = make_cfg(f"optimizer={optimizer}")
    config.validate(cfg)
    assert cfg.optimizer.name == optimizer and cfg.optimizer.lr > 0


def test_optimizers_carry_their_own_knobs(make_cfg):
    sgd = make_cfg("optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true").optimizer
    assert (sgd.momentum, sgd.nesterov) == (0.9, True)
    assert make_cfg("optimizer=adamw").optimizer.weight_decay > 0


@pytest.mark.parametrize("dataset", config.DATASETS)
def test_every_dataset_composes_and_validates(make_cfg, dataset):
    cfg = make_cfg(f"data={dataset}")
    config.validate(cfg)
    assert cfg.data.name == dataset


def test_list_override_and_flattened_params(make_cfg):
    cfg = make_cfg("model.hidden_units=[256,128]", "optimizer=sgd")
    config.validate(cfg)
    flat = config.flatten(cfg)
    assert flat["model.hidden_units"] == [256, 128]
    assert flat["optimizer.momentum"] == 0.0
    assert flat["epochs"] == 5 and "hydra" not in flat
    assert all("." in key or key in config.TOP_LEVEL for key in flat)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("epochs=0", "epochs=0"),
        ("epochs=abc", "epochs='abc'"),
        ("epochs=2.5", "epochs=2.5"),
        ("epochs=true", "epochs=true"),
        ("batch_size=-1", "batch_size=-1"),
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("optimizer.lr=nan", "optimizer.lr=nan"),
        ("model.dropout=1.5", "model.dropout=1.5"),
        ("model.hidden_units=[]", "model.hidden_units=[]"),
        ("model.hidden_units=[128,-4]", "model.hidden_units=[128, -4]"),
        ("model.hidden_units=[10000000]", "model.hidden_units=[10000000]"),
        ("model.hidden_units=64", "model.hidden_units=64"),
        ("model.activation=relux", "model.activation='relux'"),
        ("data.val_fraction=0", "data.val_fraction=0"),
        ("seed=-1", "seed=-1"),
        ("mlflow.tracking_uri=ftp://host/x", "mlflow.tracking_uri='ftp://host/x'"),
        ("mlflow.experiment=''", "mlflow.experiment=''"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(make_cfg, override, named):
    cfg = make_cfg(override)
    with pytest.raises(ExperimentError) as caught:
        config.validate(cfg)
    message = str(caught.value)
    assert message.startswith(f"{named} is invalid: expected ")
    assert "\n" not in message


def test_keys_added_with_plus_are_rejected(make_cfg):
    with pytest.raises(ExperimentError, match="optimizer.foo is not a known key"):
        config.validate(make_cfg("+optimizer.foo=1"))


def test_fallback_only_for_mnist(make_cfg):
    with pytest.raises(ExperimentError, match="allow_fallback=true is only possible with data=mnist"):
        config.validate(make_cfg("data=fashion_mnist", "data.allow_fallback=true"))


def test_relative_runs_dir_is_taken_from_the_project_root(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.runs_dir(make_cfg("runs_dir=runs")) == config.PROJECT_ROOT / "runs"
    assert config.runs_dir(make_cfg(f"runs_dir={tmp_path}/x")) == tmp_path / "x"


def test_performance_knobs_validate(make_cfg):
    config.validate(make_cfg("jit_compile=true", "steps_per_execution=8"))
    config.validate(make_cfg("jit_compile=false"))
    with pytest.raises(ExperimentError, match="jit_compile='yes' is invalid: expected one of 'auto', true, false"):
        config.validate(make_cfg("jit_compile=yes"))
    with pytest.raises(ExperimentError, match="backend='torch' is invalid: expected one of tensorflow, jax"):
        config.validate(make_cfg("backend=torch"))


def test_jax_backend_without_jax_installed(make_cfg, monkeypatch):
    real_find_spec = config.importlib.util.find_spec
    monkeypatch.setattr(
        config.importlib.util, "find_spec", lambda name: None if name == "jax" else real_find_spec(name)
    )
    with pytest.raises(ExperimentError, match=r"backend=jax needs JAX: pip install -e '.\[jax\]'"):
        config.validate(make_cfg("backend=jax"))
