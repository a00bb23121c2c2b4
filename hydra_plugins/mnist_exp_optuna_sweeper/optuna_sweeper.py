"""Adapts mnist_exp.tuning.Search to Hydra's Sweeper interface; the search itself lives there."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Configured under hydra.sweeper (conf/hydra/sweeper/mnist_optuna.yaml)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = {
            key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in settings.items()
        }
        self.config: DictConfig | None = None
        self.launcher = None
        self._set_up_lock = threading.Lock()
        self._launcher_set_up = False

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from mnist_exp import config, tracking, tuning
        from mnist_exp.errors import ExperimentError
        from mnist_exp.sweep import PARENT_RUN_ENV

        assert self.config is not None and self.launcher is not None
        try:
            search = self._search(arguments)
            # Launchers that run jobs in other processes can take one trial per thread; Hydra's basic
            # launcher runs them in this process, one at a time.
            concurrent = "BasicLauncher" not in type(self.launcher).__name__
            result = search.run(
                arguments, self._launch, per_job_overrides=self._thread_overrides(), concurrent=concurrent
            )
        except ExperimentError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        retrain = tuning.retrain_command(result, self._retrain_prefix(arguments))
        print(tuning.format_summary(result, retrain))
        parent_run_id = os.environ.get(PARENT_RUN_ENV)
        if parent_run_id:
            plots = tuning.search_plots(result, config.runs_dir(self.config) / "optuna" / result.study_name)
            champion = tracking.log_search(self.config, parent_run_id, result, plots, retrain)
            if champion is not None:
                name, version = champion.split("/")
                print(f"registered models:/{name}@champion (version {version}): the best trial's model")
        return result

    def _search(self, arguments: list[str]):
        from mnist_exp import config, tuning
        from mnist_exp.errors import ExperimentError

        for override in OverridesParser.create().parse_overrides(arguments):
            if override.is_sweep_override():
                raise ExperimentError(
                    f"{override.input_line}: put values to search in hydra.sweeper.search_space, "
                    "not on the command line"
                )
        s = self.settings
        tuning.check_settings(s)
        metric = self.config.optimized_metric
        storage = s.get("storage") or f"sqlite:///{config.runs_dir(self.config) / 'optuna.db'}"
        if storage.startswith("sqlite:///"):
            (config.runs_dir(self.config)).mkdir(parents=True, exist_ok=True)
        return tuning.Search(
            storage=storage, study_name=s["study_name"], metric=metric, direction=config.direction(metric),
            space=s.get("search_space") or {}, sampler=s.get("sampler") or {}, pruner=s.get("pruner") or {},
            n_trials=s["n_trials"], n_jobs=s["n_jobs"], max_failures=s.get("max_failures"),
        )

    def _launch(self, batch: list[list[str]], first_index: int) -> list[Any]:
        with self._set_up_lock:
            if not self._launcher_set_up:
                self._set_up_launcher()
                self._launcher_set_up = True
        returns = self.launcher.launch(batch, initial_job_idx=first_index)
        outcomes = []
        for job in returns:
            try:
                outcomes.append(job.return_value)
            except Exception as error:  # the job raised: Hydra keeps the exception for us
                outcomes.append(error)
        return outcomes

    def _set_up_launcher(self) -> None:
        """One-time launcher set-up that is not safe from two slot threads at once: Ray's init."""
        ray_settings = getattr(self.launcher, "ray_cfg", None)
        if ray_settings is None:
            return
        from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

        from mnist_exp.sweep import PARENT_RUN_ENV
        from mnist_exp.tuning import STUDY_ENV

        # Ray workers do not inherit this process's environment, and the launcher's config was resolved
        # before the search set it: hand the parent run and the study to the jobs now.
        init = OmegaConf.to_container(ray_settings.init, resolve=True) if OmegaConf.is_config(ray_settings.init) \
            else dict(ray_settings.init)
        runtime_env = dict(init.get("runtime_env") or {})
        runtime_env["env_vars"] = {
            **(runtime_env.get("env_vars") or {}),
            **{name: os.environ.get(name, "") for name in (PARENT_RUN_ENV, STUDY_ENV)},
        }
        init["runtime_env"] = runtime_env
        ray_settings.init = OmegaConf.create(init)
        start_ray(ray_settings.init)

    def _thread_overrides(self) -> list[str]:
        """Parallel trials split the cores: oversubscribed TensorFlow thread pools run slower than sequential ones."""
        n_jobs = self.settings["n_jobs"]
        threads = self.settings.get("threads_per_job", "auto")
        launcher = self.config.hydra.launcher
        target = str(launcher.get("_target_", ""))
        if threads == 0 or n_jobs <= 1 or not ("joblib" in target or "ray" in target):
            return []
        if threads == "auto" and "ray" in target:
            # A Ray job gets the CPUs it reserved, on whichever machine runs it.
            threads = int((launcher.get("ray") or {}).get("remote", {}).get("num_cpus") or 1)
        elif threads == "auto":
            threads = max(1, (os.cpu_count() or 1) // n_jobs)
        return [f"+hydra.job.env_set.{name}={threads}" for name in (
            "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS",
        )] + ["+hydra.job.env_set.TF_NUM_INTEROP_THREADS=1"]

    @staticmethod
    def _retrain_prefix(arguments: list[str]) -> list[str]:
        return [a for a in arguments if not a.startswith("hydra.")]
