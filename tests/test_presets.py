"""Named experiments (conf/experiment/) and debug presets (conf/debug/): each composes over the defaults,
runs, and the overfit check fails a model that cannot learn in one line."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mnist_exp import config, experiment
from mnist_exp.config.paths import tracking_uri
from mnist_exp.data import load_dataset, with_training_subset
from mnist_exp.system.errors import ExperimentError, ModelCannotLearn
from mnist_exp.tracking import run_tags
from tests.conftest import CONF_DIR, all_runs, compose_cfg, run_cli, store_client, write_npz

PRESET_GROUPS = ("experiment", "debug")
PRESETS = [(group, path.stem) for group in PRESET_GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
# Named experiments train on full datasets for minutes: here on a tiny file in the same format, for one epoch.
TINY_EXPERIMENT = ("epochs=1", "plots=false", "mlflow.log_model=false")
# Makes the overfit check fail: no model learns anything at this learning rate in two epochs.
CANNOT_LEARN = ("debug=overfit", "optimizer.lr=1e-7", "epochs=2")


@pytest.fixture(scope="module")
def shared_runs_dir(tmp_path_factory):
    """One store for the module (creating one costs seconds); each test records into its own experiment."""
    return tmp_path_factory.mktemp("presets") / "runs"


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


def preset_values(group: str, option: str) -> dict:
    """The keys a preset file sets, dotted, and the group options its defaults list chooses ({'data': ...})."""
    preset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    chosen = {}
    for entry in preset.pop("defaults", []):
        (key, value), = entry.items()
        chosen[key.removeprefix("override /")] = value
    return {**config.flatten(preset), **{f"{group_name}.name": value for group_name, value in chosen.items()}}


def test_the_named_presets_exist():
    assert {"classic_mnist", "fashion_mnist_best"} <= {option for group, option in PRESETS if group == "experiment"}
    assert {"fast_dev_run", "overfit"} <= {option for group, option in PRESETS if group == "debug"}


@pytest.mark.parametrize(("group", "option"), PRESETS)
def test_a_preset_wins_over_the_defaults(tmp_path, group, option):
    flat = config.flatten(compose_cfg(tmp_path, f"{group}={option}"))
    expected = preset_values(group, option)
    assert {key: flat[key] for key in expected} == expected


def test_the_classic_experiment_is_the_defaults_named(tmp_path):
    assert config.flatten(compose_cfg(tmp_path, "experiment=classic_mnist")) == config.flatten(compose_cfg(tmp_path))


def test_a_debug_preset_wins_over_an_experiment_and_the_command_line_over_both(tmp_path):
    cfg = compose_cfg(tmp_path, "experiment=fashion_mnist_best", "debug=fast_dev_run")
    assert (cfg.epochs, cfg.data.name, cfg.mlflow.log_model, cfg.plots) == (1, "mnist_sample", False, False)
    assert list(cfg.model.hidden_units) == preset_values("experiment", "fashion_mnist_best")["model.hidden_units"]
    cfg = compose_cfg(tmp_path, "experiment=fashion_mnist_best", "debug=overfit", "data=fashion_mnist", "epochs=7")
    assert (cfg.data.name, cfg.epochs, cfg.train_subset) == ("fashion_mnist", 7, 300)


@pytest.mark.slow  # a training per preset
@pytest.mark.parametrize(("group", "option"), PRESETS)
def test_every_preset_runs(shared_runs_dir, tiny_npz, group, option):
    tiny = (f"data.path={tiny_npz}", *TINY_EXPERIMENT) if group == "experiment" else ()
    cfg = compose_cfg(shared_runs_dir, f"mlflow.experiment={group}-{option}", f"{group}={option}", *tiny)
    outcome = experiment.run(cfg, overrides=[f"{group}={option}"])
    run = store_client(tracking_uri(cfg)).get_run(outcome["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["dataset.name"] == cfg.data.name
    if cfg.min_train_accuracy is not None:  # trained until it fit its examples, and no longer
        assert run.data.metrics["accuracy"] >= cfg.min_train_accuracy
        assert outcome["epochs_completed"] < cfg.epochs
        assert run.data.params["dataset.train_examples"] == str(cfg.train_subset)


def test_the_overfit_check_fails_a_model_that_cannot_learn(shared_runs_dir):
    cfg = compose_cfg(shared_runs_dir, "mlflow.experiment=cannot-learn", *CANNOT_LEARN)
    with pytest.raises(ModelCannotLearn, match=r"^the model cannot learn: training accuracy reached 0\.\d+ on 300 "
                                               r"examples in 2 epochs, below min_train_accuracy=0\.99; "):
        experiment.run(cfg)
    (run,) = all_runs(store_client(tracking_uri(cfg)), "cannot-learn")
    assert run.info.status == "FAILED" and run.data.tags[run_tags.STATE_TAG] == "FAIL"
    assert run.data.tags[run_tags.FAILURE_TAG].startswith("ModelCannotLearn: the model cannot learn: ")


@pytest.mark.parametrize(
    ("override", "named"),
    [("train_subset=0", "train_subset=0"), ("train_subset=1.5", "train_subset=1.5"),
     ("min_train_accuracy=0", "min_train_accuracy=0"), ("min_train_accuracy=1.5", "min_train_accuracy=1.5")],
)
def test_bad_overfit_settings_name_the_key(tmp_path, override, named):
    with pytest.raises(ExperimentError, match=f"^{named} is invalid: expected null or "):
        config.validate(compose_cfg(tmp_path, override))


def test_a_training_subset_is_drawn_by_the_seed_and_leaves_validation_and_test_whole(tmp_path, tiny_npz):
    data = compose_cfg(tmp_path, f"data.path={tiny_npz}").data
    full = load_dataset(data, seed=1)
    subset = with_training_subset(full, 50, seed=1)
    assert subset.sizes == {**full.sizes, "train": 50}
    assert (subset.x_val == full.x_val).all() and (subset.y_test == full.y_test).all()
    assert {row.tobytes() for row in subset.x_train} <= {row.tobytes() for row in full.x_train}
    assert len(set(subset.y_train.tolist())) > 5, "drawn from the whole split, not its first rows"
    assert (with_training_subset(full, 50, seed=1).y_train == subset.y_train).all()
    assert not (with_training_subset(full, 50, seed=2).x_train == subset.x_train).all()
    assert subset.split_digests["train"] != full.split_digests["train"]
    assert subset.split_digests["test"] == full.split_digests["test"]
    with pytest.raises(ExperimentError, match=f"^train_subset=1000 is more than the {full.sizes['train']} training "):
        with_training_subset(full, 1000, seed=1)


@pytest.mark.slow
def test_presets_work_from_the_command_line(tmp_path, cli_in_process):
    runs_dir = tmp_path / "runs"
    passed = run_cli("experiment=classic_mnist", "debug=fast_dev_run", runs_dir=runs_dir)
    assert passed.returncode == 0, passed.stderr
    assert "(mnist_sample, 1 epoch, " in passed.stdout

    code, _, stderr = cli_in_process(*CANNOT_LEARN, runs_dir=runs_dir)  # the same command line, in this process
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: the model cannot learn: training accuracy reached ")
    states = sorted((run.info.status, run.data.params["train_subset"]) for run in all_runs(store_client(runs_dir)))
    assert states == [("FAILED", "300"), ("FINISHED", "null")]


@pytest.mark.slow
def test_help_lists_the_presets():
    result = run_cli("--help", runs_dir=None, timeout=60)
    assert result.returncode == 0
    assert "experiment: classic_mnist, fashion_cnn_best, fashion_mlp_best, fashion_mnist_best" in result.stdout
    assert "model: cnn, mlp" in result.stdout
    assert "debug: fast_dev_run, overfit" in result.stdout
