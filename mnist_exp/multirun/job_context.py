"""What a sweep hands to each of its jobs, and what a job hands back: typed, and the one way across processes.

A job may run in the sweeping process, a joblib worker or a Ray worker on another machine. Each of them
runs Hydra's `run_job`, which applies `hydra.job.env_set`; so the sweeper adds one override per job,
`+hydra.job.env_set.MNIST_EXP_JOB=<the JSON below, base64url without padding>`, and the job reads it back with
`from_environment`. The encoding keeps Hydra's override grammar from parsing the JSON.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

JOB_ENV = "MNIST_EXP_JOB"
# TensorFlow's thread pools for one job when several share a machine (see the sweepers' threads_per_job).
THREAD_ENVS = ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
INTEROP_THREAD_ENV = "TF_NUM_INTEROP_THREADS"
# Why a trial the sweep stopped (Ctrl-C or SIGTERM) is FAIL.
INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM)"


@dataclass(frozen=True)
class StudyLink:
    """The Optuna study a trial belongs to: enough for a job to report epochs and ask the pruner."""

    storage: str
    study_name: str
    metric: str
    pruner: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class JobContext:
    """A job's place in its multirun: the parent run, and for a search the study and trial number."""

    parent_run_id: str
    study: StudyLink | None = None
    trial_number: int | None = None
    # The sweeping process (where the context is made): a worker it started watches it (multirun.sweep_worker).
    sweeper_pid: int | None = field(default_factory=os.getpid)
    # False: the job draws no pictures of its own whatever `plots` says (a search's trial, unless the search's
    # command line set plots; the parent run holds the search's pictures).
    pictures: bool = True

    def override(self) -> str:
        """The Hydra override that carries this context into the job's environment."""
        values = {key: value for key, value in dataclasses.asdict(self).items() if value is not None}
        encoded = base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode()
        return f"+hydra.job.env_set.{JOB_ENV}={encoded.rstrip('=')}"

    @classmethod
    def from_environment(cls) -> JobContext | None:
        encoded = os.environ.get(JOB_ENV)
        if not encoded:
            return None
        values = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        study = StudyLink(**values["study"]) if values.get("study") else None
        return cls(parent_run_id=values["parent_run_id"], study=study, trial_number=values.get("trial_number"),
                   sweeper_pid=values.get("sweeper_pid"), pictures=values.get("pictures", True))


@dataclass(frozen=True)
class JobOutcome:
    """What one job of a multirun returns to its sweeper."""

    state: str  # COMPLETE, PRUNED or FAIL
    value: float | None = None  # the optimised metric, for COMPLETE (the first objective of several)
    values: tuple[float, ...] | None = None  # every objective, for COMPLETE
    test_accuracy: float | None = None
    run_id: str | None = None
    reason: str | None = None  # why it was PRUNED or FAIL
    model: str | None = None  # model.name of the job's config, when it could be composed


def thread_overrides(threads: int) -> list[str]:
    """Overrides that give one job `threads` TensorFlow threads (and one inter-op thread)."""
    return [f"+hydra.job.env_set.{name}={threads}" for name in THREAD_ENVS] + [
        f"+hydra.job.env_set.{INTEROP_THREAD_ENV}=1"
    ]
