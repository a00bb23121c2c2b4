"""mnist-exp's grid sweeper: Hydra's basic sweeper (`-m key=a,b`), with the sweep's MLflow parent run around
its jobs and each job's JobContext added to its overrides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from mnist_exp.workarounds import hydra_basic_sweeper_class


class _WithOverrides:
    """A launcher that appends the same overrides to every job it launches."""

    def __init__(self, launcher: Any, extra: Sequence[str]) -> None:
        self.launcher, self.extra = launcher, list(extra)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        return self.launcher.launch([[*job, *self.extra] for job in job_overrides], initial_job_idx=initial_job_idx)


class GridSweeper(hydra_basic_sweeper_class()):
    """Configured under hydra.sweeper (conf/hydra/sweeper/mnist_grid.yaml); the default of every multirun."""

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_exp import sweeping
        from mnist_exp.job_context import JobContext

        config: DictConfig = self.config
        with sweeping.parent_run(config, arguments) as parent:
            launcher = self.launcher
            self.launcher = _WithOverrides(launcher, [JobContext(parent.run_id).override()])
            try:
                returns = super().sweep(arguments)
            finally:
                self.launcher = launcher
            summary = parent.close_grid()
        sweeping.report_grid(parent, summary)
        return returns
