"""The tags and names mnist-exp puts on MLflow runs: written by the recorders, read by the queries."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mnist_exp import config
from mnist_exp.config import paths
from mnist_exp.system.redaction import mask

if TYPE_CHECKING:
    from omegaconf import DictConfig

FAILURE_TAG = "mnist_exp.failure"          # why a run FAILED or was KILLED
PRUNED_TAG = "mnist_exp.pruned"            # why the pruner stopped it
OVERRIDES_TAG = "mnist_exp.overrides"      # the command-line overrides, space-separated
SWEEP_TAG = "mnist_exp.sweep"              # "true" on a multirun's parent run
STATE_TAG = "mnist_exp.state"              # COMPLETE, PRUNED, FAIL or KILLED (Optuna's words, for runs too)
OWNER_TAG = "mnist_exp.owner"              # the process that runs it (mnist_exp.system.processes)
FALLBACK_TAG = "mnist_exp.dataset_fallback"
GIT_DIRTY_TAG = "mnist_exp.git_dirty"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
RERUN_OF_TAG = "mnist_exp.rerun_of"        # on a run made by `python -m mnist_exp.rerun RUN`: RUN's id
SWEEP_KEY_TAG = "mnist_exp.sweep_key"      # on a grid sweep's parent: its identity (multirun.grid_jobs.sweep_key)
CONFIG_DIGEST_TAG = "mnist_exp.config_digest"  # on a sweep job's run: config_digest of its composed config
TRIAL_NUMBER_TAG = "optuna.trial_number"
OPTUNA_STUDY_TAG = "optuna.study_name"      # on a search's parent run: the study it holds every trial of
PARETO_FRONT_TAG = "optuna.pareto_front"    # "true" on a trial's run on its study's Pareto front, else "false"
OPTUNA_STORAGE_TAG = "optuna.storage"      # ... and that study's storage, its password masked
MAX_TAG_LENGTH = 5000
MAX_RUN_NAME_LENGTH = 250
GIT_TIMEOUT_S = 5


def run_name(overrides: Sequence[str]) -> str:
    """A readable name from the command-line overrides: 'optimizer=sgd epochs=10', or 'defaults'."""
    shown = [mask(o) for o in overrides if not o.lstrip("+~").startswith(("hydra.", "mlflow.", "runs_dir="))]
    return (" ".join(shown) or "defaults")[:MAX_RUN_NAME_LENGTH]


@functools.cache
def source_tags() -> dict[str, str]:
    """The commit the code ran from, and whether the checkout had uncommitted changes; {} when git cannot
    tell within seconds. Asked once per process: the code a process runs is what it imported at its start."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(paths.PROJECT_ROOT), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
            check=True, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # never write the index: read-only checkouts
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {GIT_COMMIT_TAG: commit, GIT_DIRTY_TAG: str(dirty).lower()}


def config_digest(cfg: DictConfig) -> str:
    """A digest of the composed config as config.yaml records it (Hydra's own node left out): equal digests,
    equal configs. A resumed grid sweep skips the jobs whose digest already FINISHED in it."""
    from omegaconf import OmegaConf

    text = mask(OmegaConf.to_yaml(OmegaConf.create(config.plain(cfg)), sort_keys=True))
    return hashlib.sha256(text.encode()).hexdigest()
