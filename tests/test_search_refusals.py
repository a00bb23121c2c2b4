"""A search refused before it starts, for each rule: one line, exit 2, no study and no run. In this process
(cli_in_process: Hydra, the Optuna sweeper plugin, our checks); test_search_cli.py refuses repeats through a real
process. Each rule's own cases: test_search.py."""

from __future__ import annotations

import pytest

from tests.conftest import MODEL_CHOICE_PRESET, finished_trials, search_preset


def search(cli_in_process, *args: str, runs_dir) -> tuple[int, str, str]:
    return cli_in_process("-m", *args, "data=mnist_sample", runs_dir=runs_dir)


def test_a_key_only_some_of_the_searched_models_have_is_refused_in_one_line(tmp_path, cli_in_process):
    runs_dir = tmp_path / "runs"
    code, _, stderr = search(cli_in_process, "hparams_search=two_models", "model=cnn", "model.filters=[4,8]",
                             search_preset(tmp_path, "two_models", MODEL_CHOICE_PRESET), runs_dir=runs_dir)
    assert code == 2
    assert stderr.strip().splitlines()[-1] == (
        "error: model.filters=[4,8]: the search chooses model (hydra.sweeper.search_space.model) and model=mlp has "
        "no filters; give each model its values in the space, with when: {model: ...}")
    assert not (runs_dir / "optuna.db").exists() or finished_trials(runs_dir / "optuna.db", "models") == 0


def test_a_loss_objective_over_label_smoothing_is_refused_in_one_line(tmp_path, cli_in_process):
    """Losses against differently smoothed targets do not rank the trials that produced them."""
    code, _, stderr = search(cli_in_process, "hparams_search=fashion_mlp", "optimized_metric=val_loss",
                             runs_dir=tmp_path / "runs")
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith(
        "error: optimized_metric val_loss cannot rank trials of different label_smoothing")
    assert not (tmp_path / "runs" / "optuna.db").exists()


INVERTED_BOUNDS = """\
# @package _global_
defaults:
  - override /hydra/sweeper: mnist_optuna
hydra:
  sweeper:
    study_name: inverted
    search_space:
      model.dropout: {type: float, low: 0.9, high: 0.5}
"""


@pytest.mark.fresh_store
def test_inverted_bounds_are_one_line_and_leave_nothing(tmp_path, cli_in_process):
    runs_dir = tmp_path / "runs"
    code, _, stderr = search(cli_in_process, "hparams_search=inverted",
                             search_preset(tmp_path, "inverted", INVERTED_BOUNDS), runs_dir=runs_dir)
    assert code == 2, stderr
    assert stderr.strip() == (
        "error: hydra.sweeper.search_space.model.dropout has inverted bounds: low=0.9 > high=0.5"
    )
    assert not (runs_dir / "mlflow.db").exists() and not (runs_dir / "optuna.db").exists()


NEVER_DRAWN = """\
# @package _global_
defaults:
  - override /hydra/sweeper: mnist_optuna
hydra:
  sweeper:
    study_name: never-drawn
    search_space:
      model: {type: categorical, choices: [mlp, cnn]}
      model.dropout: {type: float, low: 0.0, high: 0.5, when: {model: rnn}}
"""


@pytest.mark.fresh_store
def test_a_condition_that_can_never_hold_is_one_line_and_leaves_nothing(tmp_path, cli_in_process):
    """Once accepted silently, the parameter never drawn; each reason: test_search.py (conditions)."""
    runs_dir = tmp_path / "runs"
    code, _, stderr = search(cli_in_process, "hparams_search=never", search_preset(tmp_path, "never", NEVER_DRAWN),
                             runs_dir=runs_dir)
    assert code == 2, stderr
    assert stderr.strip() == (
        "error: hydra.sweeper.search_space.model.dropout.when.model=rnn can never hold: rnn is not among the choices "
        "of model [mlp,cnn]"
    )
    assert not runs_dir.exists()


@pytest.mark.fresh_store
def test_pruning_a_search_of_two_objectives_is_refused_in_one_line(tmp_path, cli_in_process):
    runs_dir = tmp_path / "runs"
    code, _, stderr = search(cli_in_process, "hparams_search=optuna", "optimized_metric=[val_accuracy,parameters]",
                             runs_dir=runs_dir)
    assert code == 2, stderr
    assert stderr.strip() == (
        "error: hydra.sweeper.pruner.name=median cannot prune a search of 2 objectives (Optuna prunes "
        "single-objective studies only); set hydra.sweeper.pruner.name=none"
    )
    assert not (runs_dir / "mlflow.db").exists() and not (runs_dir / "optuna.db").exists()
