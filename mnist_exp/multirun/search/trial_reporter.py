"""The job side of an Optuna trial: report the optimised metric after every epoch, stop when the pruner says so.

Runs wherever the job runs (the sweeping process, a joblib or Ray worker) and talks to the study
through its storage, with Optuna's public storage API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnist_exp.multirun.job_context import StudyLink
from mnist_exp.multirun.search.search_space import make_pruner, make_storage
from mnist_exp.system import interrupts
from mnist_exp.system.errors import RunPruned


@dataclass
class TrialReporter:
    """Called after each epoch with (epoch, metrics); raises RunPruned when the pruner stops the trial."""

    study: Any
    storage: Any
    trial_id: int
    number: int
    metric: str

    @classmethod
    def connect(cls, link: StudyLink, trial_number: int) -> TrialReporter:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = make_storage(link.storage)
        study = optuna.load_study(study_name=link.study_name, storage=storage, pruner=make_pruner(link.pruner))
        study_id = storage.get_study_id_from_name(link.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        return cls(study, storage, trial_id, trial_number, link.metric)

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        import optuna

        try:
            with interrupts.deferred():  # never half a write: it would leave the study's SQLite file locked
                self.storage.set_trial_intermediate_value(self.trial_id, epoch, float(value))
        except optuna.exceptions.UpdateFinishedTrialError:
            # The sweep ended this trial (Ctrl-C or SIGTERM): the run stops as KILLED, not FAILED.
            raise KeyboardInterrupt from None
        if self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            raise RunPruned(f"pruned after epoch {epoch}: {self.metric}={value:.4f}")
