"""Config composition for every group option, and the validation of values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_exp import config
from mnist_exp.config import paths
from mnist_exp.system.errors import ExperimentError
from tests.conftest import CONF_DIR, PROJECT_ROOT

SHIPPED_OPTIMIZERS = sorted(path.stem for path in (CONF_DIR / "optimizer").glob("*.yaml"))
SHIPPED_DATASETS = sorted(path.stem for path in (CONF_DIR / "data").glob("*.yaml"))


def test_the_defaults_list_names_every_option_of_each_group_it_lists():
    import re

    named = {}
    for line in (CONF_DIR / "config.yaml").read_text().splitlines():
        # - group: default   # [-m] group=a|b|c   (...)
        found = re.match(r"\s*- (\w+): \w+\s+#.*?\b\1=([\w|]+)", line)
        if found:
            named[found[1]] = set(found[2].split("|"))
    assert set(named) == {"optimizer", "model", "data", "experiment", "hparams_search", "debug"}
    for group, options in named.items():
        assert options == {path.stem for path in (CONF_DIR / group).glob("*.yaml")}, group


def test_defaults_are_the_classic_keras_mnist_mlp(make_cfg):
    cfg = make_cfg()
    config.validate(cfg)
    assert cfg.optimizer.name == "rmsprop" and cfg.optimizer.lr == 0.001
    assert list(cfg.model.hidden_units) == [512] and cfg.model.activation == "relu" and cfg.model.dropout == 0
    assert (cfg.epochs, cfg.batch_size) == (5, 128)
    assert cfg.data.name == "mnist" and cfg.data.allow_fallback is True


@pytest.mark.parametrize("optimizer", SHIPPED_OPTIMIZERS)
def test_every_optimizer_composes_and_validates(make_cfg, optimizer):
    cfg = make_cfg(f"optimizer={optimizer}")
    config.validate(cfg)
    assert cfg.optimizer.name == optimizer and cfg.optimizer.lr > 0


def test_optimizers_carry_their_own_knobs(make_cfg):
    sgd = make_cfg("optimizer=sgd", "optimizer.momentum=0.9", "optimizer.nesterov=true").optimizer
    assert (sgd.momentum, sgd.nesterov) == (0.9, True)
    assert make_cfg("optimizer=adamw").optimizer.weight_decay > 0


@pytest.mark.parametrize("dataset", SHIPPED_DATASETS)
def test_every_dataset_composes_and_validates(make_cfg, dataset):
    cfg = make_cfg(f"data={dataset}")
    config.validate(cfg)
    assert cfg.data.name == dataset and len(cfg.data.class_names) == 10
    assert cfg.data.picture_layout == ("fill" if dataset == "fashion_mnist" else "digit")


def test_a_dataset_carries_its_class_names_and_picture_layout_into_the_params(make_cfg):
    flat = config.flatten(make_cfg("data=fashion_mnist"))
    assert flat["data.class_names"][9] == "Ankle boot" and flat["data.picture_layout"] == "fill"
    assert flat["data.loader"] == "mnist_exp.data.sources:load_fashion_mnist"


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
        ("repeats=0", "repeats=0"),
        ("repeats=1.5", "repeats=1.5"),
        ("mlflow.tracking_uri=ftp://host/x", "mlflow.tracking_uri='ftp://host/x'"),
        ("mlflow.experiment=''", "mlflow.experiment=''"),
        ("optimizer.name=foo", "optimizer.name='foo'"),
        ("optimizer.momentum=1", "optimizer.momentum=1"),
        ("optimizer.rho=-0.1", "optimizer.rho=-0.1"),
        ("optimizer.epsilon=0", "optimizer.epsilon=0"),
        ("+optimizer.weight_decay=2", "optimizer.weight_decay=2"),
        ("+optimizer.amsgrad=1", "optimizer.amsgrad=1"),
        ("+optimizer.clipnorm=abc", "optimizer.clipnorm='abc'"),
        ("+optimizer.clipnorm=inf", "optimizer.clipnorm=inf"),
        ("data.name=fashion-mnist", "data.name='fashion-mnist'"),
        ("data.loader=load_mnist", "data.loader='load_mnist'"),
        ("data.loader=no_such_module_xyz:load", "data.loader='no_such_module_xyz:load'"),
        ("data.loader=mnist_exp.data.no_such_module:load", "data.loader='mnist_exp.data.no_such_module:load'"),
        ("data.class_names=[]", "data.class_names=[]"),
        ("data.class_names=[1,2]", "data.class_names=[1, 2]"),
        ("data.picture_layout=centred", "data.picture_layout='centred'"),
        ("data.augment=-1", "data.augment=-1"),
        ("data.augment=20", "data.augment=20"),
        ("data.augment=true", "data.augment=true"),
        ("label_smoothing=1", "label_smoothing=1"),
        ("label_smoothing=-0.1", "label_smoothing=-0.1"),
        ("lr_schedule=linear", "lr_schedule='linear'"),
        # Names become folder names (artifacts, plots): never paths that leave the run folders.
        ("mlflow.experiment=/abs/dir", "mlflow.experiment='/abs/dir'"),
        ("mlflow.experiment=../x", "mlflow.experiment='../x'"),
        ("mlflow.experiment=..", "mlflow.experiment='..'"),
        (f"mlflow.experiment={'e' * 501}", f"mlflow.experiment='{'e' * 501}'"),
        ("mlflow.registered_model=bad/name", "mlflow.registered_model='bad/name'"),
        ("mlflow.registered_model=bad:name", "mlflow.registered_model='bad:name'"),
        # Relative to the launch directory: checked with the rest of the config, before TensorFlow loads.
        ("mlflow.tracking_uri=sqlite:///x.db", "mlflow.tracking_uri='sqlite:///x.db'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(make_cfg, override, named):
    cfg = make_cfg(override)
    with pytest.raises(ExperimentError) as caught:
        config.validate(cfg)
    message = str(caught.value)
    assert message.startswith(f"{named} is invalid: expected ")
    assert "\n" not in message


def test_the_cnn_composes_with_its_own_keys_and_none_of_the_mlps(make_cfg):
    cfg = make_cfg("model=cnn", "model.filters=[16,32,64]", "model.batch_norm=true")
    config.validate(cfg)
    assert cfg.model.name == "cnn" and list(cfg.model.filters) == [16, 32, 64] and cfg.model.batch_norm is True
    assert "hidden_units" not in cfg.model
    config.validate(make_cfg("model=cnn", "model.dense_units=[]", "model.pooling=none"))


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("model.filters=[]", "model.filters=[]"),
        ("model.filters=[32,0]", "model.filters=[32, 0]"),
        ("model.filters=32", "model.filters=32"),
        ("model.kernel_size=0", "model.kernel_size=0"),
        ("model.pooling=min", "model.pooling='min'"),
        ("model.dense_units=128", "model.dense_units=128"),
        ("model.dense_units=[0]", "model.dense_units=[0]"),
        ("model.batch_norm=1", "model.batch_norm=1"),
        ("model.dropout=1", "model.dropout=1"),
    ],
)
def test_bad_cnn_values_name_the_key_and_what_is_allowed(make_cfg, override, named):
    with pytest.raises(ExperimentError, match=f"^{named.replace('[', '.').replace(']', '.')} is invalid: expected "):
        config.validate(make_cfg("model=cnn", override))


def test_a_schedule_and_plateau_reduction_are_refused_together(make_cfg):
    config.validate(make_cfg("lr_schedule=one_cycle", "label_smoothing=0.1", "data.augment=2"))
    with pytest.raises(ExperimentError, match="^lr_schedule=cosine sets the learning rate at every step and "
                                              "reduce_lr_patience=3 halves it on plateaus: choose one"):
        config.validate(make_cfg("lr_schedule=cosine", "reduce_lr_patience=3"))


def test_a_model_name_without_a_builder_is_one_line(make_cfg):
    with pytest.raises(ExperimentError, match="^model.name='rnn' is invalid: expected one of mlp, cnn$"):
        config.validate(make_cfg("model.name=rnn"))


@pytest.mark.parametrize("added", ["+model.foo=1", "+data.foo=1", "+mlflow.foo=1", "+foo=1"])
def test_keys_added_with_plus_are_rejected(make_cfg, added):
    key = added.removeprefix("+").split("=")[0]
    with pytest.raises(ExperimentError, match=f"^{key} is not a known key"):
        config.validate(make_cfg(added))


def test_an_optimizer_takes_any_numeric_key_keras_may_know(make_cfg):
    """Which keys an optimizer class takes is Keras' to say, when it is built (tests/test_model.py)."""
    config.validate(make_cfg("optimizer=adam", "+optimizer.clipnorm=1.0", "+optimizer.use_ema=true"))


def test_a_dataset_may_have_any_name_and_loader(make_cfg):
    config.validate(make_cfg("data.name=my_digits", "data.loader=tests.test_data:stripes", "data.allow_fallback=false"))


def test_validation_imports_neither_numpy_nor_the_data_package():
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from mnist_exp import config\n"
        f"with initialize_config_dir(config_dir={str(CONF_DIR)!r}, version_base='1.3'):\n"
        "    for dataset in ('mnist', 'fashion_mnist', 'mnist_sample'):\n"
        "        config.validate(compose('config', overrides=['data=' + dataset]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'tensorflow', 'keras', 'mlflow')"
        " or m.startswith('mnist_exp.data')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_fallback_only_for_mnist(make_cfg):
    with pytest.raises(ExperimentError, match="allow_fallback=true is only possible with data=mnist"):
        config.validate(make_cfg("data=fashion_mnist", "data.allow_fallback=true"))


def test_relative_runs_dir_is_taken_from_the_project_root(make_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.runs_dir(make_cfg("runs_dir=runs")) == paths.PROJECT_ROOT / "runs"
    assert paths.runs_dir(make_cfg(f"runs_dir={tmp_path}/x")) == tmp_path / "x"


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


def test_hydra_flags_after_the_overrides_are_put_before_them():
    from mnist_exp.commands.hydra_arguments import flags_first

    # Hydra's argparse took `-m` or `--cfg job` after an override as unrecognized arguments (a usage block).
    assert flags_first(["optimizer=sgd,adam", "-m", "epochs=1", "--cfg", "job", "-p", "optimizer", "--info",
                        "plugins", "seed=1", "--config-name=config"]) == (
        ["-m", "--cfg", "job", "-p", "optimizer", "--info", "plugins", "--config-name=config"],
        ["optimizer=sgd,adam", "epochs=1", "seed=1"])
    assert flags_first(["--info", "seed=1"]) == (["--info"], ["seed=1"])


def test_a_sweep_asked_for_its_config_shows_each_jobs_config(tmp_path):
    import yaml

    from mnist_exp.commands.hydra_arguments import sweep_configs

    # Hydra itself refuses -m with --cfg (a 12-line traceback): each job, repeats included, one YAML document.
    text = sweep_configs(["-m", "--cfg", "job"], ["optimizer=sgd,adam", "repeats=2", f"runs_dir={tmp_path}"])
    jobs = list(yaml.safe_load_all(text))
    assert [(job["optimizer"]["name"], job["seed"]) for job in jobs] == [
        ("sgd", 42), ("sgd", 43), ("adam", 42), ("adam", 43)]
    assert "hydra" not in jobs[0] and text.startswith("# job 0 of 4: optimizer=sgd repeats=2 ")
    hydra = list(yaml.safe_load_all(sweep_configs(["--multirun", "--cfg=hydra"], ["epochs=1,2"])))
    assert [(job["hydra"]["job"]["num"], job["hydra"]["overrides"]["task"]) for job in hydra] == [
        (0, ["epochs=1"]), (1, ["epochs=2"])] and list(hydra[0]) == ["hydra"]
    (lr,) = yaml.safe_load_all(sweep_configs(["-m", "-c", "job", "-p", "optimizer.lr", "--resolve"], []))
    assert lr == 0.001  # rmsprop's, the one job of a sweep without sweep values
    search = sweep_configs(["-m", "--cfg", "job"], ["hparams_search=optuna"])
    assert search.startswith("# an Optuna search of 20 trials: each trial is this config with values drawn for "
                             "optimizer, optimizer.lr, batch_size, model.hidden_units, model.dropout")
    assert yaml.safe_load(search)["optimizer"]["name"] == "rmsprop"


@pytest.mark.parametrize(("flags", "overrides", "message"), [
    (["-m", "--cfg", "job"], ["hparams_search=optuna", "optimizer=sgd,adam"],
     "optimizer=sgd,adam: put values to search in hydra.sweeper.search_space"),
    (["-m", "--cfg", "jobs"], [], "--cfg jobs: choose one of job, hydra, all"),
    (["-m", "--cfg", "job"], ["hydra.job.chdir=true,false"], "hydra.job.chdir=true,false: a sweep cannot vary"),
])
def test_what_a_sweep_cannot_show_is_one_line(flags, overrides, message):
    from mnist_exp.commands.hydra_arguments import sweep_configs

    with pytest.raises(ExperimentError, match="^" + message.replace(".", r"\.")):
        sweep_configs(flags, overrides)


@pytest.mark.parametrize("override", ["experiment=[classic_mnist,fashion_mnist_best]",
                                      "+experiment=[classic_mnist,fashion_mnist_best]",
                                      "experiment=classic_mnist,[classic_mnist,fashion_mnist_best]",
                                      "hparams_search=[optuna,fashion_mlp]"])
def test_a_list_of_presets_is_refused_before_hydra_merges_them(override):
    from mnist_exp.commands.hydra_arguments import check_one_option

    with pytest.raises(ExperimentError, match=r"(experiment takes one preset|hparams_search takes one search) "
                                              r"\(a list would merge .*fashion"):
        check_one_option([override])
    check_one_option(["experiment=classic_mnist,fashion_mnist_best", "experiment=[classic_mnist]", "seed=1"])
