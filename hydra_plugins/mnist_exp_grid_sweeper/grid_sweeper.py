"""mnist-exp's grid sweeper: Hydra's basic sweeper (`-m key=a,b`), with the sweep's MLflow parent run around
its jobs, each job `repeats` times, the jobs that already FINISHED in a resumed sweep left out
(mnist_exp.multirun.grid_jobs), and each job's JobContext added to its overrides."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from mnist_exp.system.workarounds import hydra_basic_sweeper_class


class _PlannedLauncher:
    """A launcher that launches what the plan keeps of each batch, with the same overrides added to every job.
    It numbers the jobs itself: repeats make a batch longer than the basic sweeper counts. With `stop`, it
    launches off the main thread, and an interrupt calls `stop` (mnist_exp.multirun.sweeping.launch_off_main_thread)."""

    def __init__(self, launcher: Any, plan: Any, extra: Sequence[str], stop: Callable[[], None] | None) -> None:
        self.launcher, self.plan, self.extra, self.stop = launcher, plan, list(extra), stop
        self.next_index = 0

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from mnist_exp.multirun.sweeping import launch_off_main_thread

        jobs = self.plan.jobs(job_overrides)
        if not jobs:
            return []
        first, self.next_index = self.next_index, self.next_index + len(jobs)
        batch = [[*job, *self.extra] for job in jobs]
        if self.stop is None:
            return self.launcher.launch(batch, initial_job_idx=first)
        return launch_off_main_thread(lambda: self.launcher.launch(batch, initial_job_idx=first), self.stop)


class GridSweeper(hydra_basic_sweeper_class()):
    """Configured under hydra.sweeper (conf/hydra/sweeper/mnist_grid.yaml); the default of every multirun."""

    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, resume: bool = True,
                 name: str | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.resume, self.name = resume, name

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_exp.multirun import grid_jobs, sweeping
        from mnist_exp.multirun.job_context import JobContext

        config: DictConfig = self.config
        key = grid_jobs.sweep_key(arguments, self.name)
        with sweeping.parent_run(config, arguments, sweep_key=key, resume=self.resume) as parent:
            plan = grid_jobs.GridPlan(
                compose=lambda overrides: self.hydra_context.config_loader.load_sweep_config(config, overrides),
                done=grid_jobs.finished_digests(parent.children()),
            )
            launcher = self.launcher
            # Jobs in worker processes stop when the parent run ends KILLED (mnist_exp.multirun.sweep_job); jobs in
            # this process stop on the interrupt itself, and Ray's workers are left to Ray.
            stop = parent.abandon if sweeping.launcher_kind(config) == sweeping.JOBLIB else None
            self.launcher = _PlannedLauncher(launcher, plan, [JobContext(parent.run_id).override()], stop)
            try:
                returns = super().sweep(arguments)
            finally:
                self.launcher = launcher
            summary = parent.close_grid()
        sweeping.report_grid(parent, summary)
        return returns
