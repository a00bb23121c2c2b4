"""The baseline trial: the composed config as a point of the search space, run first, once per study."""

from __future__ import annotations

import optuna
import pytest

from mnist_exp.multirun.job_context import INTERRUPTED_REASON, JobOutcome
from mnist_exp.multirun.search.search_baseline import BASELINE_ATTR, baseline_params
from mnist_exp.multirun.search.search_result import SearchResult, TrialOutcome
from tests.conftest import completing, compose_cfg, load_trials, make_search


def sweeper_view(tmp_path, *overrides: str):
    cfg = compose_cfg(tmp_path / "runs", "hparams_search=optuna", *overrides, with_hydra=True)
    return cfg, cfg.hydra.sweeper.search_space


def test_the_baseline_is_the_composed_config_with_the_users_overrides(tmp_path):
    params, problem = baseline_params(*sweeper_view(tmp_path))
    assert problem is None
    assert params == {"optimizer": "rmsprop", "optimizer.lr": 0.001, "batch_size": 128,
                      "model.hidden_units.layers": 1, "model.hidden_units.width_1": 512, "model.dropout": 0.0}
    params, _ = baseline_params(*sweeper_view(tmp_path, "optimizer=adam", "model.hidden_units=[256,128]"))
    assert params["optimizer"] == "adam"
    assert (params["model.hidden_units.layers"], params["model.hidden_units.width_2"]) == (2, 128)


@pytest.mark.parametrize(("override", "problem"), [
    ("batch_size=100", "batch_size=100 is not one of its choices"),
    ("optimizer.lr=0.5", "optimizer.lr=0.5 is outside [0.0001, 0.03]"),
    ("model.hidden_units=[512,512,512,512]", "model.hidden_units=[512,512,512,512] is not 1 to 3 layers"),
    ("model.hidden_units=[2048]", "model.hidden_units=[2048] is outside [64, 1024]"),
])
def test_a_config_outside_the_space_has_no_baseline_and_says_why(tmp_path, override, problem):
    assert baseline_params(*sweeper_view(tmp_path, override)) == (None, problem)


def test_a_baseline_has_only_the_parameters_of_the_model_it_chose(tmp_path):
    from tests.conftest import MODEL_CHOICE_SPACE

    cfg = compose_cfg(tmp_path / "runs", "hparams_search=optuna", "model=cnn", "model.filters=[16,32]",
                      with_hydra=True)
    assert baseline_params(cfg, MODEL_CHOICE_SPACE) == ({
        "model": "cnn", "model.filters.layers": 2, "model.filters.width_1": 16, "model.filters.width_2": 32,
        "model.dropout": 0.0}, None)
    cfg = compose_cfg(tmp_path / "runs", "hparams_search=optuna", "model.hidden_units=[32]", with_hydra=True)
    assert baseline_params(cfg, MODEL_CHOICE_SPACE)[0] == {
        "model": "mlp", "model.hidden_units.layers": 1, "model.hidden_units.width_1": 32, "model.dropout": 0.0}


def test_the_models_preset_searches_either_model_from_either_baseline(tmp_path):
    from mnist_exp.multirun.search.search_checks import check_settings

    for model, own in (("mlp", "model.hidden_units.width_1"), ("cnn", "model.filters.width_2")):
        cfg = compose_cfg(tmp_path / "runs", "hparams_search=models", f"model={model}", with_hydra=True)
        check_settings(cfg.hydra.sweeper)
        params, problem = baseline_params(cfg, cfg.hydra.sweeper.search_space)
        assert problem is None and params["model"] == model and own in params
        assert not any(key.startswith(("model.filters", "model.hidden_units")) and key.split(".")[1] not in own
                       for key in params)


BASELINE = {"optimizer": "adam", "optimizer.lr": 0.001, "batch_size": 128,
            "model.hidden_units.layers": 1, "model.hidden_units.width_1": 64}


def test_the_baseline_runs_first_and_once_per_study(tmp_path):
    launched = []

    def launch(jobs, first_index):
        launched.extend(jobs)
        return completing(jobs, first_index)

    result = make_search(tmp_path, n_trials=3, baseline=BASELINE).run([], launch)
    assert launched[0].overrides == ["optimizer=adam", "optimizer.lr=0.001", "batch_size=128",
                                     "model.hidden_units=[64]"]
    assert [t.baseline for t in result.trials] == [True, False, False]
    assert result.baseline.value == pytest.approx(0.01)
    assert result.gain == pytest.approx(result.best.value - 0.01) and result.gain > 0
    resumed = make_search(tmp_path, n_trials=5, baseline=BASELINE).run([], completing)
    assert [t.baseline for t in resumed.trials] == [True, False, False, False, False]
    assert sum(t.params == BASELINE for t in load_trials(make_search(tmp_path))) == 1


def test_a_baseline_the_search_was_stopped_in_runs_again_one_that_failed_does_not(tmp_path):
    def interrupted(jobs, first_index):
        return [JobOutcome("FAIL", reason=INTERRUPTED_REASON) for _ in jobs]

    make_search(tmp_path, n_trials=1, baseline=BASELINE, max_failures=1).run([], interrupted)
    result = make_search(tmp_path, n_trials=1, baseline=BASELINE).run([], completing)
    assert [(t.state, t.baseline) for t in result.trials] == [("FAIL", True), ("COMPLETE", True)]

    def failing(jobs, first_index):
        return [JobOutcome("FAIL", reason="nan loss") for _ in jobs]

    other = tmp_path / "other"
    other.mkdir()
    make_search(other, n_trials=1, baseline=BASELINE, max_failures=1).run([], failing)
    result = make_search(other, n_trials=2, baseline=BASELINE).run([], completing)
    assert [t.baseline for t in result.trials] == [True, False, False]


def test_no_baseline_when_disabled_or_when_the_study_is_complete(tmp_path):
    assert not any(t.baseline for t in make_search(tmp_path, n_trials=2).run([], completing).trials)
    make_search(tmp_path, n_trials=2, baseline=BASELINE).run([], lambda *a: pytest.fail("ran again"))
    study = optuna.load_study(study_name="test", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert not any(t.user_attrs.get(BASELINE_ATTR) for t in study.trials), "nothing left WAITING"


def test_a_grid_marks_its_point_of_the_baseline_instead_of_running_it_twice(tmp_path):
    space = {"optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
             "optimizer.lr": {"type": "categorical", "choices": [0.001, 0.01]}}
    result = make_search(tmp_path, space=space, sampler={"name": "grid", "seed": 0}, n_trials=4,
                         baseline={"optimizer": "adam", "optimizer.lr": 0.001}).run([], completing)
    assert len(result.trials) == 4
    assert [t.params for t in result.trials if t.baseline] == [{"optimizer": "adam", "optimizer.lr": 0.001}]


def test_the_gain_is_positive_when_the_search_improves_in_either_direction():
    def outcome(number, value, baseline=False):
        return TrialOutcome(number, "COMPLETE", value, {}, [], baseline=baseline)

    losses = SearchResult("s", "sqlite://", "val_loss", "minimize", [outcome(0, 0.5, True), outcome(1, 0.3)])
    assert losses.gain == pytest.approx(0.2)
    accuracies = SearchResult("s", "sqlite://", "val_accuracy", "maximize", [outcome(0, 0.9, True), outcome(1, 0.8)])
    assert accuracies.gain == pytest.approx(0.0) and accuracies.best.number == 0
