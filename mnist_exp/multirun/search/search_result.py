"""What a search found: its trials as plain values, the best of them, and how to train that one again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mnist_exp.multirun.search.search_baseline import BASELINE_ATTR
from mnist_exp.reports import tables

MODEL_ATTR = "model"  # the trial's user attribute holding its model.name


@dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    overrides: list[str]
    test_accuracy: float | None = None
    run_id: str | None = None
    reason: str | None = None
    baseline: bool = False  # the trial of the config without the space's suggestions (search_baseline)
    values: list[float] | None = None  # every objective's value, for COMPLETE; value is the first
    on_front: bool = False  # on the Pareto front of a search of several objectives
    model: str | None = None  # the trial's model.name


@dataclass
class SearchResult:
    study_name: str
    storage: str
    metric: str
    direction: str
    trials: list[TrialOutcome] = field(default_factory=list)
    ran_now: int = 0
    objectives: dict[str, str] = field(default_factory=dict)  # metric -> direction when several, else {}

    @property
    def best(self) -> TrialOutcome | None:
        """The best trial by the (first) objective; of several objectives, the front's best by the first."""
        trials = self.front if self.objectives else self.trials
        return tables.best(trials, self.metric, lambda t: t.value, lambda t: t.state)

    @property
    def front(self) -> list[TrialOutcome]:
        """The Pareto front of a search of several objectives, best first by the first; [] for one objective."""
        front = [t for t in self.trials if t.on_front]
        return tables.best_first(front, self.metric, lambda t: t.value, lambda t: t.state)

    def collect(self, study, baseline_point: Mapping[str, Any] | None = None) -> None:
        """Read the study's trials (and its Pareto front); `baseline_point` marks the trial with those params as
        the baseline (a grid's own point) when none was enqueued."""
        self.trials = [trial_outcome(t) for t in study.get_trials(deepcopy=False)]
        if self.objectives:
            front = {t.number for t in study.best_trials}
            for trial in self.trials:
                trial.on_front = trial.number in front
        if baseline_point is not None:
            same = next((t for t in self.trials if t.params == dict(baseline_point)), None)
            if same is not None:
                same.baseline = True

    @property
    def baseline(self) -> TrialOutcome | None:
        """The baseline trial, or None when the study has none (hydra.sweeper.enqueue_baseline=false)."""
        return next((t for t in self.trials if t.baseline), None)

    @property
    def gain(self) -> float | None:
        """How much better the best trial is than the baseline in the optimised metric (>= 0); None unless
        both completed."""
        best, baseline = self.best, self.baseline
        if best is None or baseline is None or baseline.value is None:
            return None
        return (best.value - baseline.value) * (1 if self.direction == "maximize" else -1)

    def retrain_command(self, tracking_uri: str | None = None, data_path: str | None = None) -> str | None:
        """The command that trains the best trial's run again from its recorded config (mnist_exp.rerun);
        `tracking_uri` is the store the run is in, `data_path` the search's data.path."""
        from mnist_exp.tracking.recorded_config import rerun_command

        if self.best is None or self.best.run_id is None:
            return None
        return rerun_command(self.best.run_id, tracking_uri, data_path)


def trial_outcome(trial) -> TrialOutcome:
    """An Optuna trial as a TrialOutcome."""
    return TrialOutcome(
        number=trial.number,
        state=trial.state.name,
        value=trial.values[0] if trial.state.name == "COMPLETE" else None,
        values=list(trial.values) if trial.state.name == "COMPLETE" else None,
        params=dict(trial.params),
        overrides=list(trial.user_attrs.get("overrides", [])),
        test_accuracy=trial.user_attrs.get("test_accuracy"),
        run_id=trial.user_attrs.get("run_id"),
        reason=trial.user_attrs.get("fail_reason"),
        baseline=bool(trial.user_attrs.get(BASELINE_ATTR)),
        # A trial that ended before its config was read only has the space's choice, if the space has one.
        model=trial.user_attrs.get(MODEL_ATTR, trial.params.get("model")),
    )
