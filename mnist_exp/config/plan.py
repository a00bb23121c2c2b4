"""A config checked once and resolved into what every part of a run reads from it.

The command lines (a run, a rerun, a search's sweeping process) call `resolve` at their edge and hand the plan
on to the run they start: it is not validated again, and its tracking URI, runs folder and monitored metric are
read from the plan. (A sweep's job is resolved once in its own process: mnist_exp.multirun.sweep_job.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig

from mnist_exp.config import OPTIMIZED_METRICS, monitored_metric, objectives, plain, validate
from mnist_exp.config.paths import runs_dir, tracking_uri
from mnist_exp.system.errors import ExperimentError

# What runs a config, when its `repeats` matters: a run of its own, a rerun given `repeats`, a search's trials.
Command = Literal["run", "rerun", "search"]


@dataclass(frozen=True)
class RunPlan:
    """A validated config's plain values and what is derived from them, each worked out once."""

    values: dict[str, Any]  # the whole config as plain, resolved Python values, without Hydra's node
    objectives: tuple[str, ...]  # the optimised metrics, first the one that picks the best run
    monitored: str  # what early stopping and learning-rate reduction watch (config.monitored_metric)
    runs_dir: Path
    # The store's URI; a password it held is masked here and now in the environment (credentials.take_password).
    tracking_uri: str

    @property
    def metric(self) -> str:
        return self.objectives[0]

    def direction(self, metric: str) -> str:
        """'maximize' or 'minimize'."""
        return OPTIMIZED_METRICS[metric]


def resolve(cfg: DictConfig | Mapping[str, Any], command: Command | None = None) -> RunPlan:
    """Check every key of `cfg` (config.validate) and what `command` allows of `repeats`, then resolve the
    plan; one ExperimentError naming the key when something cannot work."""
    values = plain(cfg)
    validate(values)
    if command is not None:
        check_repeats(values["repeats"], command)
    uri = tracking_uri(values)
    if values["mlflow"]["tracking_uri"]:
        values["mlflow"]["tracking_uri"] = uri  # masked: the plan holds no password
    return RunPlan(
        values=values,
        objectives=tuple(objectives(values)),
        monitored=monitored_metric(values),
        runs_dir=runs_dir(values),
        tracking_uri=uri,
    )


def check_repeats(repeats: int, command: Command) -> None:
    """`repeats` makes a grid sweep run each job once per seed (mnist_exp.multirun.grid_jobs); a run, a rerun and
    a search's trial run a config once."""
    if command == "run" and repeats > 1:
        raise ExperimentError(f"repeats={repeats} runs {repeats} jobs, one per seed: add -m")
    if command == "rerun" and repeats > 1:
        raise ExperimentError(f"repeats={repeats}: a rerun is one run; repeat with python -m mnist_exp -m")
    if command == "search" and repeats != 1:
        raise ExperimentError(f"repeats={repeats} is for grid sweeps; a search runs each trial once")
