"""One job of a multirun, in whichever process runs it: a run under the sweep's parent, its outcome typed.

A failure is recorded (FAILED in MLflow) and returned, never raised: the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

from omegaconf import DictConfig

from mnist_exp import experiment, interrupts, run_tags
from mnist_exp.errors import ExperimentError, RunPruned, first_line
from mnist_exp.job_context import JobContext, JobOutcome
from mnist_exp.run_record import RunContext

log = logging.getLogger("mnist_exp")


def run_job(cfg: DictConfig, overrides: Sequence[str], job_number: int) -> JobOutcome:
    interrupts.check()  # a Ctrl-C that Python dropped between jobs still ends the sweep
    job = JobContext.from_environment()
    context, label = RunContext(), f"job {job_number}"
    if job is not None:
        reporter = None
        if job.study is not None and job.trial_number is not None:
            from mnist_exp.trial_reporter import TrialReporter

            reporter = TrialReporter.connect(job.study, job.trial_number)
            label += f" (trial {job.trial_number})"
        tags = {run_tags.TRIAL_NUMBER_TAG: str(job.trial_number)} if job.trial_number is not None else {}
        if job.study is None:
            # What a resumed grid sweep compares to leave out the jobs that FINISHED (mnist_exp.grid_jobs); not
            # on trials, which a search may draw twice alike. A config that cannot be read fails below.
            with contextlib.suppress(ExperimentError):
                tags[run_tags.CONFIG_DIGEST_TAG] = run_tags.config_digest(cfg)
        context = RunContext(parent_run_id=job.parent_run_id, tags=tags, on_epoch=reporter)
    try:
        outcome = experiment.run(cfg, overrides, context)
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
    return JobOutcome("COMPLETE", value=outcome[cfg.optimized_metric], test_accuracy=outcome["test_accuracy"],
                      run_id=outcome["run_id"])
