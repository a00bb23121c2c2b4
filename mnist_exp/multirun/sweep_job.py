"""One job of a multirun, in whichever process runs it: a run under the sweep's parent, its outcome typed.

A failure is recorded (FAILED in MLflow) and returned, never raised: the sweep goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from mnist_exp import experiment
from mnist_exp.config import objectives
from mnist_exp.config.plan import RunPlan, resolve
from mnist_exp.multirun.job_context import INTERRUPTED_REASON, JobContext, JobOutcome
from mnist_exp.multirun.sweep_worker import is_worker_of, watched_job
from mnist_exp.system import collection, interrupts
from mnist_exp.system.errors import ExperimentError, RunPruned, first_line
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_record import RunContext

log = logging.getLogger("mnist_exp")
# The sweeps (by their sweeping process) whose job this worker process stopped on Ctrl-C or SIGTERM: the sweep is
# stopping, and its queued jobs that reach this worker, before the parent run says so, start no run.
_STOPPED_SWEEPS: set[int] = set()


def run_job(cfg: DictConfig, overrides: Sequence[str], job_number: int) -> JobOutcome:
    interrupts.check()  # a Ctrl-C that Python dropped between jobs still ends the sweep
    job = JobContext.from_environment()
    label = f"job {job_number}" + (f" (trial {job.trial_number})" if job and job.trial_number is not None else "")
    plan = _plan(cfg)
    if job is None or not is_worker_of(job.sweeper_pid):
        return _run(cfg, overrides, job, label, plan)
    reporter = _reporter(job)
    sweep_ended = _sweep_ended(plan, job, reporter)
    if job.sweeper_pid in _STOPPED_SWEEPS or _ended_already(sweep_ended):
        # joblib hands the batch's queued jobs to the workers the stopped ones freed: no run for those.
        return JobOutcome("FAIL", reason=INTERRUPTED_REASON)
    try:
        with watched_job(job.sweeper_pid, sweep_ended):
            return _run(cfg, overrides, job, label, plan, reporter)
    except KeyboardInterrupt:
        # The run is KILLED; the sweep already counts the trial as FAIL (or this worker alone was signalled).
        log.info("%s stopped: %s", label, INTERRUPTED_REASON)
        _STOPPED_SWEEPS.add(job.sweeper_pid)
        # The sweep is stopping and shuts this worker down next, waiting for it.
        collection.leave_the_rest_to_exit()
        return JobOutcome("FAIL", reason=INTERRUPTED_REASON)


def _plan(cfg: DictConfig) -> RunPlan | None:
    """The job's config resolved, once in its process; None when it cannot work (experiment.run then says why in
    the job's FAILED run), whatever raised (an interpolation this worker cannot resolve, too)."""
    try:
        return resolve(cfg)
    except Exception:
        return None


def _sweep_ended(plan: RunPlan | None, job: JobContext, reporter) -> Callable[[], bool]:
    """Whether the sweep gave this job up: it ended the job's trial (a search) or its parent run (a grid sweep)."""
    if reporter is not None:
        return lambda: reporter.storage.get_trial(reporter.trial_id).state.is_finished()
    if plan is None:
        return lambda: False  # the job fails before it trains
    clients = []  # made on the first question, in the watcher's thread

    def parent_ended() -> bool:
        if not clients:
            import mlflow

            from mnist_exp.system.credentials import connection_url

            clients.append(mlflow.MlflowClient(connection_url(plan.tracking_uri)))
        return clients[0].get_run(job.parent_run_id).info.status != "RUNNING"

    return parent_ended


def _ended_already(sweep_ended: Callable[[], bool]) -> bool:
    try:
        return sweep_ended()
    except Exception:  # the store cannot say: run the job, its watcher asks again
        return False


def _reporter(job: JobContext | None):
    if job is None or job.study is None or job.trial_number is None:
        return None
    from mnist_exp.multirun.search.trial_reporter import TrialReporter

    return TrialReporter.connect(job.study, job.trial_number)


def _run(cfg: DictConfig, overrides: Sequence[str], job: JobContext | None, label: str, plan: RunPlan | None,
         reporter=None) -> JobOutcome:
    model = OmegaConf.select(cfg, "model.name", default=None, throw_on_missing=False)
    return dataclasses.replace(_outcome(cfg, overrides, job, label, plan, reporter), model=model)


def _outcome(cfg: DictConfig, overrides: Sequence[str], job: JobContext | None, label: str,
             plan: RunPlan | None = None, reporter=None) -> JobOutcome:
    context = RunContext()
    if job is not None:
        reporter = reporter or _reporter(job)
        tags = {run_tags.TRIAL_NUMBER_TAG: str(job.trial_number)} if job.trial_number is not None else {}
        if job.study is None:
            # What a resumed grid sweep compares to leave out the jobs that FINISHED (mnist_exp.multirun.grid_jobs); not
            # on trials, which a search may draw twice alike. A config that cannot be read fails below.
            with contextlib.suppress(ExperimentError):
                tags[run_tags.CONFIG_DIGEST_TAG] = run_tags.config_digest(cfg)
        context = RunContext(parent_run_id=job.parent_run_id, tags=tags, on_epoch=reporter, pictures=job.pictures)
    try:
        outcome = experiment.run(cfg, overrides, context, plan=plan)
    except RunPruned as pruned:
        log.info("%s %s", label, pruned)
        return JobOutcome("PRUNED", reason=str(pruned))
    except Exception as error:
        # Our own errors already say what is wrong; anything else needs its type to make sense.
        reason = first_line(str(error))
        reason = reason if isinstance(error, ExperimentError) else f"{type(error).__name__}: {reason}"
        log.error("%s failed: %s", label, reason)
        return JobOutcome("FAIL", reason=reason)
    log.info(
        "%s done: %s val_accuracy=%.4f test_accuracy=%.4f (%.1f s)", label, " ".join(overrides),
        outcome["val_accuracy"], outcome["test_accuracy"], outcome["train_seconds"],
    )
    metrics = plan.objectives if plan is not None else objectives(cfg)  # a caller that resolved nothing
    values = tuple(float(outcome[metric]) for metric in metrics)
    return JobOutcome("COMPLETE", value=values[0], values=values, test_accuracy=outcome["test_accuracy"],
                      run_id=outcome["run_id"])
