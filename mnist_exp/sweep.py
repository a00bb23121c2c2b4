"""Multiruns: what one job does, and the Hydra callback that groups the jobs under one MLflow parent run."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# How jobs find their parent. Not MLFLOW_RUN_ID: MLflow would resume that run
# instead of nesting under it (mlflow issue #15713). Inherited by launcher workers.
PARENT_RUN_ENV = "MNIST_EXP_PARENT_RUN_ID"

log = logging.getLogger("mnist_exp")


def run_sweep_job(cfg: DictConfig, overrides: list[str], job_number: int) -> dict:
    """One job of a multirun: a failure is recorded (FAILED in MLflow) and reported, and the sweep goes on."""
    from mnist_exp import experiment, interrupts, tuning
    from mnist_exp.errors import ExperimentError, RunPruned

    interrupts.check()  # a Ctrl-C that Python dropped between jobs still ends the sweep
    trial = tuning.reporter_from_env()
    tags = {"optuna.trial_number": str(trial.number)} if trial is not None else {}
    label = f"job {job_number}" + (f" (trial {trial.number})" if trial is not None else "")
    try:
        outcome = experiment.run(
            cfg, overrides, parent_run_id=os.environ.get(PARENT_RUN_ENV) or None, on_epoch=trial, tags=tags
        )
    except RunPruned as pruned:
        log.info("%s %s", label, pruned)
        return {"state": "PRUNED", "reason": str(pruned)}
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        # Our own errors already say what is wrong; anything else needs its type to make sense.
        reason = first_line if isinstance(error, ExperimentError) else f"{type(error).__name__}: {first_line}"
        log.error("%s failed: %s", label, reason)
        return {"state": "FAIL", "reason": reason}
    log.info(
        "%s done: %s val_accuracy=%.4f test_accuracy=%.4f (%.1f s)", label, " ".join(overrides),
        outcome["val_accuracy"], outcome["test_accuracy"], outcome["train_seconds"],
    )
    return {
        "state": "COMPLETE", "value": outcome[cfg.optimized_metric], "test_accuracy": outcome["test_accuracy"],
        "run_id": outcome["run_id"],
    }


RAY_CONNECT_TIMEOUT_S = 5.0


def _check_ray_cluster(config: DictConfig) -> None:
    """With the Ray launcher and a cluster address, fail in seconds when nothing answers there:
    Ray itself retries for minutes."""
    from mnist_exp.errors import ExperimentError
    from mnist_exp.net import can_connect

    launcher = config.hydra.launcher
    if "ray" not in str(launcher.get("_target_", "")):
        return
    address = str(((launcher.get("ray") or {}).get("init") or {}).get("address") or "")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # none (a local Ray) or "auto": Ray finds it on this machine
    if not can_connect(host, int(port), timeout=RAY_CONNECT_TIMEOUT_S):
        raise ExperimentError(
            f"cannot reach the Ray cluster at {address} (RAY_ADDRESS or hydra.launcher.ray.init.address)"
        )


class MlflowSweepCallback(Callback):
    """Opens the parent run before the first job and closes it with a summary after the last."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_exp import config as settings
        from mnist_exp.errors import ExperimentError
        from mnist_exp.tracking import start_sweep

        sweep_overrides = list(config.hydra.overrides.task)
        try:
            settings.validate(config)
            _check_ray_cluster(config)
            if self._is_search(config):
                from mnist_exp.tuning import check_settings

                check_settings(OmegaConf.to_container(config.hydra.sweeper, resolve=True))
            self.parent_run_id = start_sweep(config, sweep_overrides)
        except ExperimentError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        atexit.register(self._abandon, config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mnist_exp.tracking import (
            finish_sweep,
            format_table,
            tracking_uri,
            ui_command,
        )

        if self.parent_run_id is None:
            return
        summary = finish_sweep(config, self.parent_run_id, best_metrics=not self._is_search(config))
        os.environ.pop(PARENT_RUN_ENV, None)
        if self._is_search(config):
            print(f"MLflow parent run {self.parent_run_id} holds the trials table and plots")
        else:
            print(f"\nSweep {self.parent_run_id}: {len(summary.rows)} jobs, sorted by final {summary.metric}")
            print(format_table(summary.rows), end="")
            if summary.best is not None:
                print(f"best: {summary.best['run_id']}  ({summary.best['overrides'] or 'defaults'})")
        print(f"UI: {ui_command(tracking_uri(config))}")
        self.parent_run_id = None
        # Failed trials are part of a search (a diverging learning rate); a grid job that fails is not.
        if summary.failed and (summary.best is None or not self._is_search(config)):
            print(f"error: {summary.failed} of {len(summary.rows)} jobs failed", file=sys.stderr)
            # Hydra has no other way to end a multirun with a failing status.
            raise SystemExit(1)

    @staticmethod
    def _is_search(config: DictConfig) -> bool:
        return "search_space" in config.hydra.sweeper

    def _abandon(self, config: DictConfig) -> None:
        from mnist_exp.tracking import abandon_sweep

        if self.parent_run_id is not None:
            abandon_sweep(config, self.parent_run_id)
