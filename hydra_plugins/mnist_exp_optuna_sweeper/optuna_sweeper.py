"""Adapts mnist_exp.multirun.search.search.Search to Hydra's Sweeper interface; the search itself lives there."""

from __future__ import annotations

import logging
import threading
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mnist_exp")


class OptunaSweeper(Sweeper):
    """Configured under hydra.sweeper (conf/hydra/sweeper/mnist_optuna.yaml)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {
            key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in settings.items()
        }
        self.config: DictConfig | None = None
        self.launcher = None
        self._ray_lock = threading.Lock()

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_exp.multirun import sweeping
        from mnist_exp.multirun.job_context import JobContext, StudyLink, thread_overrides
        from mnist_exp.multirun.search.search import TrialJob
        from mnist_exp.multirun.search.search_plots import search_plots
        from mnist_exp.multirun.search.search_settings import configured_search, pictures_asked
        from mnist_exp.system.errors import ExperimentError, exit_with
        from mnist_exp.tracking.store import check_store_access

        assert self.config is not None and self.launcher is not None
        try:
            sweeping.check_ray_cluster(self.config)  # before anything is written or moved to the environment
            search, plan = configured_search(self.settings, self.config, arguments)
            check_store_access(plan)  # a server refusing us leaves no empty study behind
            search.open_study()
        except ExperimentError as error:
            exit_with(str(error))
        kind = sweeping.launcher_kind(self.config)
        threads = sweeping.threads_per_job(self.config, search.n_jobs, self.settings.get("threads_per_job", "auto"))
        per_job = thread_overrides(threads) if threads is not None else []
        pictures = pictures_asked(arguments)
        study = StudyLink(search.storage, search.study_name, search.metric, dict(search.pruner))
        with sweeping.parent_run(self.config, arguments, search=search, plan=plan) as parent:
            sweeping.announce_search(search, parent)

            def launch(jobs: list[TrialJob], first_index: int) -> list[Any]:
                with self._ray_lock:
                    sweeping.start_ray_once(self.launcher)
                batch = [[*job.overrides, *per_job, JobContext(parent.run_id, study, job.number,
                                                                pictures=pictures).override()]
                         for job in jobs]
                return sweeping.launch_outcomes(self.launcher, batch, first_index)

            try:
                # Launchers that run jobs in other processes take one trial per slot thread; Hydra's basic
                # launcher runs them in this process, one at a time.
                result = search.run(arguments, launch, concurrent=kind != sweeping.IN_PROCESS)
            except ExperimentError as error:
                exit_with(str(error))
            retrain = result.retrain_command(parent.store.uri, self.config.data.path)
            plots = search_plots(result, plan.runs_dir / "optuna" / result.study_name)
            summary = parent.close_search(result, plots, retrain)
        sweeping.report_search(parent, result, summary, retrain)
        return result
