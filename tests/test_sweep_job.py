"""The job side of a multirun (mnist_exp.multirun.sweep_job): what its JobContext changes about the run."""

from __future__ import annotations

import pytest

from mnist_exp.multirun import sweep_job
from mnist_exp.multirun.job_context import JOB_ENV, JobContext, StudyLink
from mnist_exp.multirun.search.search_settings import pictures_asked


def test_the_context_crosses_the_environment_whole(monkeypatch):
    context = JobContext("parent", StudyLink("sqlite:////tmp/o.db", "study", "val_accuracy"), 3, pictures=False)
    monkeypatch.setenv(JOB_ENV, context.override().rpartition("=")[2])
    assert JobContext.from_environment() == context


@pytest.mark.parametrize("pictures", [True, False])
def test_a_trial_draws_pictures_only_when_its_search_asked(make_cfg, monkeypatch, pictures):
    seen = []

    def run(cfg, overrides, context, plan):
        assert plan.values["plots"] is True, "the job's config resolved once, handed to the run"
        seen.append((cfg.plots, context.pictures))
        return {"val_accuracy": 0.5, "test_accuracy": 0.5, "train_seconds": 1.0, "run_id": "r"}

    monkeypatch.setattr(sweep_job.experiment, "run", run)
    job = JobContext("parent", pictures=pictures)
    from mnist_exp.config.plan import resolve

    cfg = make_cfg("plots=true")
    outcome = sweep_job._outcome(cfg, [], job, "job 0", plan=resolve(cfg), reporter=lambda *args: None)
    # The recorded config keeps plots=true: the retrain command's run draws them.
    assert outcome.state == "COMPLETE" and seen == [(True, pictures)]


def test_a_run_told_to_draw_no_pictures_records_its_config_as_given(make_cfg, tmp_path):
    from mnist_exp import experiment
    from mnist_exp.tracking.run_record import RunContext
    from tests.conftest import artifact_paths, store_client, write_npz

    cfg = make_cfg(f"data.path={write_npz(tmp_path / 'mnist.npz')}", "epochs=1", "plots=true",
                   "mlflow.log_model=false")
    outcome = experiment.run(cfg, context=RunContext(pictures=False))
    client = store_client(tmp_path / "runs")
    assert "plots" not in artifact_paths(client, outcome["run_id"])
    assert client.get_run(outcome["run_id"]).data.params["plots"] == "true"


def test_the_search_asks_for_pictures_by_setting_plots():
    assert not pictures_asked(["hparams_search=optuna", "epochs=2", "hydra.sweeper.n_trials=4"])
    assert pictures_asked(["hparams_search=optuna", "plots=true"])
    assert pictures_asked(["+plots=false"])  # and then as it says


def test_a_job_whose_config_cannot_be_resolved_fails_as_a_job_and_the_sweep_goes_on(make_cfg):
    """An interpolation the job's process cannot resolve (an ${oc.env:...} unset on a Ray worker) once escaped the
    job as an exception; it is the job's failure, returned."""
    from omegaconf import OmegaConf

    cfg = make_cfg()
    OmegaConf.update(cfg, "epochs", "${nope}", force_add=True)
    outcome = sweep_job.run_job(cfg, ["epochs=${nope}"], 0)
    assert outcome.state == "FAIL" and "nope" in outcome.reason
