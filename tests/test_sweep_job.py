"""The job side of a multirun (mnist_exp.multirun.sweep_job): what its JobContext changes about the run."""

from __future__ import annotations

import pytest

from hydra_plugins.mnist_exp_optuna_sweeper.optuna_sweeper import pictures_asked
from mnist_exp.multirun import sweep_job
from mnist_exp.multirun.job_context import JOB_ENV, JobContext, StudyLink


def test_the_context_crosses_the_environment_whole(monkeypatch):
    context = JobContext("parent", StudyLink("sqlite:////tmp/o.db", "study", "val_accuracy"), 3, pictures=False)
    monkeypatch.setenv(JOB_ENV, context.override().rpartition("=")[2])
    assert JobContext.from_environment() == context


@pytest.mark.parametrize(("pictures", "drawn"), [(True, True), (False, False)])
def test_a_trial_draws_pictures_only_when_its_search_asked(make_cfg, monkeypatch, pictures, drawn):
    seen = []

    def run(cfg, overrides, context):
        seen.append(cfg.plots)
        return {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_seconds": 1.0, "run_id": "r"}

    monkeypatch.setattr(sweep_job.experiment, "run", run)
    job = JobContext("parent", pictures=pictures)
    outcome = sweep_job._outcome(make_cfg("plots=true"), [], job, "job 0", reporter=lambda *args: None)
    assert outcome.state == "COMPLETE" and seen == [drawn]


def test_the_search_asks_for_pictures_by_setting_plots():
    assert not pictures_asked(["hparams_search=optuna", "epochs=2", "hydra.sweeper.n_trials=4"])
    assert pictures_asked(["hparams_search=optuna", "plots=true"])
    assert pictures_asked(["+plots=false"])  # and then as it says
