"""Hydra callback that groups a multirun under one MLflow parent run."""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

# How jobs find their parent. Not MLFLOW_RUN_ID: MLflow would resume that run
# instead of nesting under it (mlflow issue #15713). Inherited by launcher workers.
PARENT_RUN_ENV = "MNIST_EXP_PARENT_RUN_ID"


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
        summary = finish_sweep(config, self.parent_run_id)
        os.environ.pop(PARENT_RUN_ENV, None)
        print(f"\nSweep {self.parent_run_id}: {len(summary.rows)} jobs, sorted by final {summary.metric}")
        print(format_table(summary.rows), end="")
        if summary.best is not None:
            print(f"best: {summary.best['run_id']}  ({summary.best['overrides'] or 'defaults'})")
        print(f"UI: {ui_command(tracking_uri(config))}")
        self.parent_run_id = None
        if summary.failed:
            print(f"error: {summary.failed} of {len(summary.rows)} jobs failed", file=sys.stderr)
            # Hydra has no other way to end a multirun with a failing status.
            raise SystemExit(1)

    def _abandon(self, config: DictConfig) -> None:
        from mnist_exp.tracking import abandon_sweep

        if self.parent_run_id is not None:
            abandon_sweep(config, self.parent_run_id)
