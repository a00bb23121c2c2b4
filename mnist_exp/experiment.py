"""One experiment, start to finish: resolve -> data -> prepare -> open run -> train -> publish."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from mnist_exp.config.plan import RunPlan, resolve
from mnist_exp.data import Dataset, load_dataset, with_training_subset
from mnist_exp.system import interrupts
from mnist_exp.system.errors import ExperimentError, out_of_memory_is_a_failure
from mnist_exp.tracking.run_record import RunContext, RunRecorder
from mnist_exp.tracking.store import check_store
from mnist_exp.training.model_memory import check_fits

if TYPE_CHECKING:
    from mnist_exp.training.train import PreparedTraining

log = logging.getLogger(__name__)


STANDALONE = RunContext()  # a run of its own: no parent, no extra tags, nobody else watching its epochs


def run(cfg: DictConfig, overrides: Sequence[str] = (), context: RunContext = STANDALONE,
        plan: RunPlan | None = None) -> dict[str, Any]:
    """Train and evaluate the experiment `cfg` describes, recorded as one MLflow run.

    Returns the final metrics (val_accuracy, val_loss, test_accuracy, test_loss, epochs_completed,
    train_seconds) and the model's size (parameters, macs_per_example), plus run_id, model_uri, tracking_uri
    and dataset. Raises ExperimentError for bad config or data before any run is created (under a parent run,
    a FAILED child records it); a failure during training leaves the run FAILED with the reason. `context`
    places the run under a parent run, adds tags, and lets another party see every epoch (an Optuna trial
    reports through it). `plan` is `cfg` resolved already (config.plan.resolve, by a command line that checked
    more of it); without it, `cfg` is resolved here.
    """
    with interrupts.scope(), interrupts.errors_count_as_interrupt():
        plan, dataset, training = _prepared(cfg, overrides, context, plan)
        from mnist_exp.tracking.run_record import record_run

        with record_run(cfg, dataset, overrides, context, plan) as recorder:
            result = training.run(on_epoch=_epoch_hook(cfg, recorder, context), on_built=recorder.log_model_size)
            with out_of_memory_is_a_failure(f"saving the model and pictures of run {recorder.run_id}"):
                model_uri = _publish(cfg, recorder, result, dataset)
    return {
        **result.metrics,
        "run_id": recorder.run_id,
        "model_uri": model_uri,
        "tracking_uri": recorder.uri,
        "dataset": dataset.name,
    }


def _prepared(cfg: DictConfig, overrides: Sequence[str], context: RunContext,
              plan: RunPlan | None) -> tuple[RunPlan, Dataset, PreparedTraining]:
    """Everything checked before the run is recorded: the config, the store, the data, the memory, and what
    only Keras can check (the optimizer's settings)."""
    try:
        plan = plan or resolve(cfg)
        check_store(plan)
        dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=plan.runs_dir / "cache")
        if cfg.train_subset is not None:
            dataset = with_training_subset(dataset, cfg.train_subset, cfg.seed)
        # Before TensorFlow loads: a model far too large for this process fails here in one line, not mid-build.
        check_fits(plan.values, dataset)
        # Imported here, after the checks that need neither: together they cost seconds.
        from mnist_exp.training.train import prepare

        values = plan.values if context.pictures else {**plan.values, "plots": False}
        return plan, dataset, prepare(values, dataset, monitored=plan.monitored)
    except ExperimentError as error:
        if context.parent_run_id is not None:
            # Every job of a sweep gets a child run, so the parent's table shows this one failed.
            from mnist_exp.tracking.run_record import record_failed_job

            record_failed_job(cfg, overrides, context, error)
        raise


def _epoch_hook(cfg: DictConfig, recorder: RunRecorder, context: RunContext):
    def record_epoch(epoch: int, metrics: dict[str, float]) -> None:
        recorder.log_epoch(epoch, metrics)
        if context.on_epoch is not None:
            context.on_epoch(epoch, metrics)

    return record_epoch


def _publish(cfg: DictConfig, recorder: RunRecorder, result, dataset: Dataset) -> str | None:
    """Final scores, the model and the pictures; returns the model's URI (None with mlflow.log_model=false)."""
    recorder.log_final(result.metrics)
    model_uri = recorder.log_model(result.model, dataset) if cfg.mlflow.log_model else None
    if result.test_predictions is not None:
        _log_run_plots(recorder, result, dataset)
    return model_uri


def _log_run_plots(recorder: RunRecorder, result, dataset: Dataset) -> None:
    """The run's pictures as artifacts under plots/; a failure is a warning and costs the run nothing."""
    from mnist_exp.reports.plots import write_run_plots

    try:
        with tempfile.TemporaryDirectory(prefix="mnist-exp-plots-") as folder:
            write_run_plots(Path(folder), result.history, dataset.x_test, dataset.y_test, result.test_predictions,
                            dataset.class_names)
            recorder.log_artifacts(Path(folder), "plots")
    except Exception as error:  # a bug or a full disk must not fail a trained, recorded run
        log.warning("no plots for run %s: %s: %s", recorder.run_id, type(error).__name__, error)


def summary(outcome: dict[str, Any]) -> str:
    """The lines printed at the end of a run: scores, run id, how to look at it."""
    from mnist_exp.tracking.store import ui_command

    epochs = int(outcome["epochs_completed"])
    return (
        f"val_accuracy {outcome['val_accuracy']:.4f}  test_accuracy {outcome['test_accuracy']:.4f}"
        f"  ({outcome['dataset']}, {epochs} epoch{'' if epochs == 1 else 's'}, {outcome['train_seconds']:.1f} s)\n"
        f"MLflow run {outcome['run_id']}\n"
        f"UI: {ui_command(outcome['tracking_uri'])}"
    )
