"""An Optuna search as hydra.sweeper's settings describe it (conf/hydra/sweeper/mnist_optuna.yaml): the settings
and the command line checked, the job's config resolved once, the study's storage and baseline worked out. The
Hydra plugin (hydra_plugins/mnist_exp_optuna_sweeper) only adapts this to Hydra's Sweeper interface."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from mnist_exp.config.plan import RunPlan, resolve
from mnist_exp.multirun.search.search import Search
from mnist_exp.multirun.search.search_baseline import baseline_params
from mnist_exp.multirun.search.search_checks import check_command_line, check_objectives, check_settings
from mnist_exp.multirun.search.search_space import storage_url

log = logging.getLogger("mnist_exp")


def configured_search(settings: Mapping[str, Any], config: DictConfig,
                      arguments: Sequence[str]) -> tuple[Search, RunPlan]:
    """The search `settings` (hydra.sweeper's, as plain values) describe over `config` (with its hydra node), and
    the config's plan; ExperimentError for anything that cannot work, before a study or a run is created."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    check_settings(settings)
    space = settings.get("search_space") or {}
    check_command_line(OverridesParser.create().parse_overrides(list(arguments)), space,
                       config.hydra.runtime.choices)
    plan = resolve(config, "search")
    check_objectives(settings, plan.objectives)
    storage = storage_url(settings.get("storage"), plan.runs_dir)
    if storage.startswith("sqlite:///"):
        plan.runs_dir.mkdir(parents=True, exist_ok=True)
    baseline = None
    if settings.get("enqueue_baseline", True):
        baseline, problem = baseline_params(config, space)
        if problem is not None:
            log.warning("no baseline trial: %s in hydra.sweeper.search_space", problem)
    metrics = plan.objectives
    search = Search(
        storage=storage, study_name=settings["study_name"], metric=plan.metric, direction=plan.direction(plan.metric),
        objectives={m: plan.direction(m) for m in metrics} if len(metrics) > 1 else {},
        space=space, sampler=settings.get("sampler") or {}, pruner=settings.get("pruner") or {},
        n_trials=settings["n_trials"], n_jobs=settings["n_jobs"], max_failures=settings.get("max_failures"),
        baseline=baseline,
    )
    return search, plan


def pictures_asked(arguments: Sequence[str]) -> bool:
    """Whether a search's trials draw their own pictures: only when its command line sets `plots` (and then as it
    says). They cost each trial about a second, and the search's parent run has pictures of its own."""
    return any(argument.lstrip("+~").partition("=")[0] == "plots" for argument in arguments)
