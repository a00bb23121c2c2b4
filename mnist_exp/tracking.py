"""Everything MLflow: the store, one run per training job, one parent run per sweep.

The only module that imports mlflow, and only inside functions: it costs ~2 s,
which `--help` and config errors should not pay.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from mnist_exp import config, interrupts
from mnist_exp.data import Dataset
from mnist_exp.errors import ExperimentError, RunPruned
from mnist_exp.net import can_connect
from mnist_exp.processes import is_dead, owner

log = logging.getLogger(__name__)

SERVER_CONNECT_TIMEOUT_S = 5.0
FAILURE_TAG = "mnist_exp.failure"
OVERRIDES_TAG = "mnist_exp.overrides"
SWEEP_TAG = "mnist_exp.sweep"
STATE_TAG = "mnist_exp.state"
OWNER_TAG = "mnist_exp.owner"
MAX_TAG_LENGTH = 5000


def tracking_uri(cfg: Mapping[str, Any]) -> str:
    """The configured URI, or SQLite at <runs_dir>/mlflow.db."""
    uri = cfg["mlflow"]["tracking_uri"]
    return uri if uri else f"sqlite:///{config.runs_dir(cfg) / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command (or address) that shows this store in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    # The `mlflow` of this environment, by full path unless it is the one on PATH (e.g. outside the venv).
    script = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    program = "mlflow" if found and Path(found).resolve() == script.resolve() else str(script)
    return f"{shlex.quote(program)} ui --backend-store-uri {shlex.quote(uri)}"


@dataclass
class RunRecorder:
    """Writes one run's epochs and results; handed to training as its per-epoch hook.

    The run is opened in a background thread (MLflow's store takes ~1 s to start) while training
    begins; the first call that needs the run waits for it.
    """

    uri: str
    client: Any = None
    run_id: str | None = None
    epochs_logged: int = 0
    _opening: threading.Thread | None = None
    _open_error: BaseException | None = None

    def wait_until_open(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self._open_error is not None:
            error, self._open_error = self._open_error, None
            raise error

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        self.wait_until_open()
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now, epoch) for key, value in metrics.items()]
        )
        self.epochs_logged = epoch
        interrupts.check()

    def log_result(self, metrics: Mapping[str, float], model: Any, dataset: Dataset, log_model: bool) -> str | None:
        """Test and final validation scores, and the model; returns the model's URI."""
        import mlflow
        from mlflow.entities import Metric

        self.wait_until_open()
        now = int(time.time() * 1000)
        final = {
            "test_loss": metrics["test_loss"],
            "test_accuracy": metrics["test_accuracy"],
            # Scores of the model that was kept (the best epoch when early stopping restored it).
            "final_val_loss": metrics["val_loss"],
            "final_val_accuracy": metrics["val_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "epochs_completed": metrics["epochs_completed"],
        }
        points = [Metric(key, float(value), now, self.epochs_logged) for key, value in final.items()]
        self.client.log_batch(self.run_id, metrics=points)
        if not log_model:
            return None
        # mlflow.keras logs into the active run; record_run sets the final status afterwards.
        try:
            with mlflow.start_run(run_id=self.run_id):
                return _log_keras_model(model, dataset)
        except OSError as error:  # a full disk, a read-only or vanished artifact folder
            location = self.client.get_run(self.run_id).info.artifact_uri
            raise ExperimentError(
                f"cannot save the model of run {self.run_id} in {location}: {error.strerror or error}"
            ) from None

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.wait_until_open()
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)


@contextlib.contextmanager
def record_run(
    cfg: DictConfig,
    dataset: Dataset,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[RunRecorder]:
    """One MLflow run around a training job, never left RUNNING.

    Ends FINISHED, FAILED (reason in the mnist_exp.failure tag) or KILLED; the
    mnist_exp.state tag says COMPLETE, PRUNED, FAIL or KILLED.
    """
    run_tags = _job_tags(overrides, parent_run_id, tags)
    if dataset.fallback_reason:
        run_tags["mnist_exp.dataset_fallback"] = dataset.fallback_reason
    recorder = RunRecorder(uri=tracking_uri(cfg))

    def open_run() -> None:
        try:
            client, experiment_id, _ = _connect_beside_training(cfg)
            kill_abandoned_runs(client, experiment_id)
            run = client.create_run(experiment_id, run_name=run_name(overrides), tags=run_tags)
            recorder.client, recorder.run_id = client, run.info.run_id
            _log_inputs(client, run.info.run_id, cfg, dataset, overrides)
        except BaseException as error:  # handed to the main thread by wait_until_open
            recorder._open_error = error

    recorder._opening = threading.Thread(target=open_run, name="open-mlflow-run", daemon=True)
    recorder._opening.start()
    status, state = "KILLED", "KILLED"
    try:
        yield recorder
        recorder.wait_until_open()
        status, state = "FINISHED", "COMPLETE"
    except RunPruned as pruned:
        status, state = "FINISHED", "PRUNED"
        _tag_if_open(recorder, "mnist_exp.pruned", str(pruned))
        raise
    except Exception as error:
        status, state = "FAILED", "FAIL"
        _tag_if_open(recorder, FAILURE_TAG, f"{type(error).__name__}: {error}")
        raise
    finally:
        # KeyboardInterrupt and SystemExit land here as KILLED.
        if recorder._opening is not None:
            recorder._opening.join()
        if recorder.run_id is not None:
            recorder.client.set_tag(recorder.run_id, STATE_TAG, state)
            recorder.client.set_terminated(recorder.run_id, status)


def _connect_beside_training(cfg: DictConfig):
    """connect(), from a thread that imports MLflow while TensorFlow traces the first step.

    CPython 3.11 can fail an import with "SystemError: AST constructor recursion depth mismatch"
    when two threads build ASTs at once (cpython gh-106905; TensorFlow's autograph parses source
    while it traces); seen once in 8 parallel runs. The import is safe to try again.
    """
    try:
        return connect(cfg)
    except SystemError as error:
        if "recursion depth mismatch" not in str(error):
            raise
        log.debug("retrying the MLflow import after %s", error)
        return connect(cfg)


def _tag_if_open(recorder: RunRecorder, key: str, value: str) -> None:
    if recorder._opening is not None:
        recorder._opening.join()
    if recorder.run_id is not None:
        recorder.client.set_tag(recorder.run_id, key, value[:MAX_TAG_LENGTH])


def check_store(cfg: Mapping[str, Any]) -> None:
    """Fail fast, without importing MLflow, when the store is plainly unusable.

    Catches a folder that cannot be created, a file that is no SQLite database, an unreachable server.
    """
    _check_store_uri(tracking_uri(cfg))


def _check_store_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        _check_sqlite_location(uri)
    elif scheme in ("http", "https"):
        _check_server_reachable(uri)


def record_failed_job(
    cfg: DictConfig, overrides: Sequence[str], parent_run_id: str, error: Exception,
    tags: Mapping[str, str] | None = None,
) -> None:
    """A FAILED child for a sweep job that stopped before training (bad value, bad data file)."""
    try:
        client, experiment_id, _ = connect(cfg)
    except ExperimentError:
        return  # the store itself is the problem; the job's error line says so
    run_tags = {
        **_job_tags(overrides, parent_run_id, tags),
        FAILURE_TAG: f"{type(error).__name__}: {error}"[:MAX_TAG_LENGTH],
        STATE_TAG: "FAIL",
    }
    run = client.create_run(experiment_id, run_name=run_name(overrides), tags=run_tags)
    _log_params(client, run.info.run_id, config.flatten(cfg))
    client.set_terminated(run.info.run_id, "FAILED")


def kill_abandoned_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process on this host is gone (SIGKILL, a lost worker)."""
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10_000
    )
    abandoned = [run.info.run_id for run in running if is_dead(run.data.tags.get(OWNER_TAG, ""))]
    for run_id in abandoned:
        client.set_tag(run_id, FAILURE_TAG, "its process died without ending the run")
        client.set_tag(run_id, STATE_TAG, "KILLED")
        client.set_terminated(run_id, "KILLED")
    if abandoned:
        log.warning("marked KILLED %d runs left RUNNING by processes that died", len(abandoned))
    return abandoned


def connect(cfg: Mapping[str, Any]):
    """(client, experiment id, uri) for the configured store, or one ExperimentError saying why not."""
    _quiet_mlflow_logging()
    check_store(cfg)
    uri = tracking_uri(cfg)

    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    name = cfg["mlflow"]["experiment"]
    try:
        with _sqlite_store_lock(uri):
            # The client builds the store at once: on a new file, tables and migrations, which race.
            client = mlflow.MlflowClient(uri)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                experiment_id = _create_experiment(client, name, _artifact_location(cfg, uri))
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    raise ExperimentError(
                        f"mlflow.experiment={name} was deleted in {uri}; restore it in the UI or choose another name"
                    )
    except MlflowException as error:
        raise ExperimentError(f"cannot use the MLflow store {uri}: {_first_line(error.message)}") from None
    except Exception as error:  # SQLAlchemy and driver errors for a file that is no MLflow database
        if isinstance(error, ExperimentError):
            raise
        raise ExperimentError(f"cannot use the MLflow store {uri}: {_first_line(str(error))}") from None
    return client, experiment_id, uri


def run_name(overrides: Sequence[str]) -> str:
    """A readable name from the command-line overrides: 'optimizer=sgd epochs=10', or 'defaults'."""
    shown = [o for o in overrides if not o.startswith(("hydra.", "mlflow.", "runs_dir="))]
    return (" ".join(shown) or "defaults")[:250]


# --- sweeps ----------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    parent_run_id: str
    metric: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        return next((row for row in self.rows if row["status"] == "FINISHED"), None)

    @property
    def failed(self) -> int:
        return sum(row["status"] != "FINISHED" for row in self.rows)


def start_sweep(cfg: DictConfig, sweep_overrides: Sequence[str]) -> str:
    """Create the parent run of a multirun; returns its id."""
    client, experiment_id, _ = connect(cfg)
    kill_abandoned_runs(client, experiment_id)
    tags = {SWEEP_TAG: "true", OVERRIDES_TAG: " ".join(sweep_overrides), OWNER_TAG: owner(), **_git_tags()}
    run = client.create_run(experiment_id, run_name=f"sweep {run_name(sweep_overrides)}"[:250], tags=tags)
    client.log_text(run.info.run_id, OmegaConf.to_yaml(_job_config(cfg)), "config.yaml")
    client.log_text(run.info.run_id, "\n".join(sweep_overrides) + "\n", "overrides.txt")
    return run.info.run_id


def finish_sweep(cfg: DictConfig, parent_run_id: str, best_metrics: bool = True) -> SweepSummary:
    """Give the parent a table of its children sorted by the optimised metric, and the best child's id.

    `best_metrics=False` leaves the best scores to the caller (an Optuna search logs its own).
    """
    client, experiment_id, _ = connect(cfg)
    metric = cfg["optimized_metric"]
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=50_000
    )
    rows = [_child_row(child) for child in children]
    sign = -1.0 if config.direction(metric) == "maximize" else 1.0

    def best_first(row: dict[str, Any]) -> tuple[bool, float]:
        value = row.get(f"final_{metric}")
        return row["status"] != "FINISHED" or value is None, sign * (value or 0.0)

    rows.sort(key=best_first)
    summary = SweepSummary(parent_run_id=parent_run_id, metric=metric, rows=rows)
    if rows:
        client.log_table(parent_run_id, data=_columns(rows), artifact_file="sweep_summary.json")
        client.log_text(parent_run_id, format_table(rows), "sweep_summary.txt")
        if cfg["plots"]:
            _log_sweep_plot(client, parent_run_id, rows, metric)
    best = summary.best
    if best is not None:
        client.set_tag(parent_run_id, "best_child_run_id", best["run_id"])
    if best is not None and best_metrics:
        client.log_metric(parent_run_id, f"best_{metric}", best[f"final_{metric}"])
        if best.get("test_accuracy") is not None:
            client.log_metric(parent_run_id, "best_child_test_accuracy", best["test_accuracy"])
    client.log_metric(parent_run_id, "jobs_failed", summary.failed)
    client.set_terminated(parent_run_id, "FINISHED" if best is not None or not rows else "FAILED")
    return summary


def _log_sweep_plot(client, parent_run_id: str, rows: Sequence[Mapping[str, Any]], metric: str) -> None:
    from mnist_exp.plots import sweep_parameters

    with tempfile.TemporaryDirectory(prefix="mnist-exp-plots-") as folder:
        plot = sweep_parameters(Path(folder) / f"{metric}_by_parameter.png", rows, metric)
        if plot is not None:
            client.log_artifact(parent_run_id, str(plot), artifact_path="plots")


def abandon_sweep(cfg: DictConfig, parent_run_id: str) -> None:
    """Mark a parent KILLED if the sweep ended without finish_sweep (Ctrl-C, a crash)."""
    with contextlib.suppress(Exception):
        client, _, _ = connect(cfg)
        if client.get_run(parent_run_id).info.status == "RUNNING":
            client.set_terminated(parent_run_id, "KILLED")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table: state, val/test accuracy, run id, overrides."""
    lines = [f"{'state':<9} {'val_acc':>8} {'test_acc':>8}  {'run id':<32}  overrides"]
    for row in rows:
        lines.append(
            f"{row['state'] or row['status']:<9} {_fmt(row.get('final_val_accuracy')):>8} "
            f"{_fmt(row.get('test_accuracy')):>8}  "
            f"{row['run_id']:<32}  {row['overrides']}"
        )
    return "\n".join(lines) + "\n"


def log_search(
    cfg: DictConfig, parent_run_id: str, result: Any, plots: Sequence[Path], retrain: str | None
) -> str | None:
    """Put an Optuna search's answer on its parent run: best value and params, all trials, plots.

    Registers the best trial's model as mlflow.registered_model@champion; returns 'NAME/VERSION'.
    """
    client, _, _ = connect(cfg)
    rows = [
        {"trial": t.number, "state": t.state, "value": t.value, "test_accuracy": t.test_accuracy,
         "run_id": t.run_id, "overrides": " ".join(t.overrides), "reason": t.reason,
         **{f"params.{k}": v for k, v in t.params.items()}}
        for t in result.trials
    ]
    if rows:
        client.log_table(parent_run_id, data=_columns(rows), artifact_file="optuna_trials.json")
    for plot in plots:
        client.log_artifact(parent_run_id, str(plot), artifact_path="plots")
    client.set_tag(parent_run_id, "optuna.study_name", result.study_name)
    client.set_tag(parent_run_id, "optuna.storage", result.storage)
    best = result.best
    if best is None:
        return None
    client.log_metric(parent_run_id, "best_value", best.value)
    if best.test_accuracy is not None:
        client.log_metric(parent_run_id, "best_trial_test_accuracy", best.test_accuracy)
    client.set_tag(parent_run_id, "best_trial_number", str(best.number))
    if retrain:
        client.set_tag(parent_run_id, "retrain_command", retrain)
    _log_params(client, parent_run_id, {f"best.{key}": value for key, value in best.params.items()})
    champion = register_champion(cfg, best.run_id) if best.run_id else None
    if champion is not None:
        client.set_tag(parent_run_id, "champion_model_version", champion)
    return champion


# --- reading the store: models and runs ------------------------------------------------------------------


def open_store(uri: str):
    """An MLflow client for an existing store, or one ExperimentError saying why not."""
    _quiet_mlflow_logging()
    scheme = urlparse(uri).scheme
    if scheme == "sqlite" and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ExperimentError(f"no MLflow store at {uri}; train a model first, or pass --tracking-uri")
    _check_store_uri(uri)

    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def load_logged_model(uri: str, run_id: str | None = None, model_uri: str | None = None) -> tuple[Any, str]:
    """(Keras model, name of the dataset it was trained on) for a run's model or a models:/ URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = open_store(uri)
    try:
        if model_uri is None:
            run = client.get_run(run_id)
            models = _logged_models(client, run.info.experiment_id, run_id)
            if not models:
                raise ExperimentError(f"run {run_id} has no logged model (was it run with mlflow.log_model=false?)")
            model_uri = models[0].model_uri
        else:
            run_id = _model_run_id(client, model_uri)
            run = client.get_run(run_id)
        model = mlflow.keras.load_model(model_uri)
    except MlflowException as error:
        raise ExperimentError(f"cannot load {model_uri or 'the model of run ' + str(run_id)}: "
                              f"{_first_line(error.message)}") from None
    return model, run.data.params.get("dataset.name", "mnist")


def _model_run_id(client, model_uri: str) -> str:
    """The run behind models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID."""
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    if "/" in reference:
        name, version = reference.split("/", 1)
        return client.get_model_version(name, version).run_id
    if model_uri.startswith("models:/"):
        return client.get_logged_model(reference).source_run_id
    raise ExperimentError(f"--model {model_uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/ID")


def register_champion(cfg: Mapping[str, Any], run_id: str) -> str | None:
    """Register `run_id`'s model under mlflow.registered_model with the alias champion; returns 'NAME/VERSION'."""
    name = cfg["mlflow"]["registered_model"]
    if not name:
        return None
    client, experiment_id, _ = connect(cfg)
    models = _logged_models(client, experiment_id, run_id)
    if not models:
        log.warning("not registering %s: run %s logged no model (mlflow.log_model=false)", name, run_id)
        return None
    from mlflow.exceptions import MlflowException

    with _sqlite_store_lock(tracking_uri(cfg)):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="MLPs trained by mnist-exp; @champion is the best search")
    version = client.create_model_version(
        name, models[0].model_uri, run_id=run_id, tags={"mnist_exp.source": "search"}, model_id=models[0].model_id
    )
    client.set_registered_model_alias(name, "champion", version.version)
    return f"{name}/{version.version}"


def _logged_models(client, experiment_id: str, run_id: str) -> list:
    """The models a run logged (mnist-exp logs one: `model`)."""
    return client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")


def recent_runs(uri: str, limit: int, experiment: str | None = None) -> list[dict[str, Any]]:
    """The newest training runs (not sweep parents), newest first, as table rows."""
    client = open_store(uri)
    experiments = [e for e in client.search_experiments() if experiment is None or e.name == experiment]
    if experiment is not None and not experiments:
        raise ExperimentError(f"no experiment named {experiment} in {uri}")
    names = {e.experiment_id: e.name for e in experiments}
    runs, page_token = [], None
    while names and len(runs) < limit:
        page = client.search_runs(
            list(names), order_by=["attributes.start_time DESC"], max_results=1000, page_token=page_token
        )
        runs += [run for run in page if run.data.tags.get(SWEEP_TAG) != "true"]
        page_token = page.token
        if not page_token:
            break
    rows = []
    for run in runs[:limit]:
        row = _child_row(run)
        ended = run.info.end_time or int(time.time() * 1000)
        row.update(experiment=names[run.info.experiment_id], name=run.info.run_name,
                   seconds=(ended - run.info.start_time) / 1000, started=run.info.start_time)
        rows.append(row)
    return rows


# --- helpers ---------------------------------------------------------------------------------------------


def _log_inputs(client, run_id: str, cfg: DictConfig, dataset: Dataset, overrides: Sequence[str]) -> None:
    params: dict[str, Any] = config.flatten(cfg)
    params.update({
        "dataset.name": dataset.name,
        "dataset.source": dataset.source,
        "dataset.digest": dataset.digest,
        "dataset.train_examples": str(dataset.sizes["train"]),
        "dataset.val_examples": str(dataset.sizes["val"]),
        "dataset.test_examples": str(dataset.sizes["test"]),
        "dataset.fallback": "true" if dataset.fallback_reason else "false",
    })
    _log_params(client, run_id, params)
    client.log_text(run_id, OmegaConf.to_yaml(_job_config(cfg)), "config.yaml")
    client.log_text(run_id, "\n".join(overrides) + "\n", "overrides.txt")
    with _sqlite_store_lock(client.tracking_uri):
        _log_dataset(client, run_id, dataset)


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Params as MLflow stores them: strings of at most 6,000 characters, 100 per request."""
    from mlflow.entities import Param

    items = [Param(key, _param_value(value)[:6000]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100])


def _log_dataset(client, run_id: str, dataset: Dataset) -> None:
    import mlflow
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for context, images, labels in (
        ("train", dataset.x_train, dataset.y_train),
        ("validation", dataset.x_val, dataset.y_val),
        ("test", dataset.x_test, dataset.y_test),
    ):
        with warnings.catch_warnings():
            # MLflow registers the local-file source under two schemes and warns that both match.
            warnings.simplefilter("ignore", UserWarning)
            entity = mlflow.data.from_numpy(
                images, targets=labels, source=dataset.source, name=dataset.name,
                digest=dataset.split_digests[context],
            )
        inputs.append(DatasetInput(entity._to_mlflow_entity(), [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    client.log_inputs(run_id, datasets=inputs)


def _log_keras_model(model: Any, dataset: Dataset) -> str:
    import keras
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    backend = keras.backend.backend()
    # Written out rather than inferred: inferring runs model.predict, whose first call costs ~0.3 s of tracing.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, dataset.x_test.shape[1]), "pixels")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(dataset.class_names)), "probabilities")]),
    )
    # Explicit requirements: inferring them re-imports the model in a subprocess (seconds).
    with _keras_input_example_fixed():
        info = mlflow.keras.log_model(
            model, name="model", signature=signature, input_example=dataset.x_test[:2],
            pip_requirements=[f"keras=={keras.__version__}", f"{backend}=={_version(backend)}"],
        )
    return info.model_uri


@contextlib.contextmanager
def _keras_input_example_fixed() -> Iterator[None]:
    """mlflow.keras writes the input example before it creates the model folder and fails
    (FileNotFoundError, mlflow issue #16183); create the folder first. Quietly."""
    import mlflow.keras.save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model, input_example, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        # MLflow checks the example by calling model.predict, whose progress bar would follow the
        # run's epoch lines, and with a list where Keras expects the named input (a warning).
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
            yield
    finally:
        keras_save._save_example = original


def _create_experiment(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another process created it between our lookup and create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def _artifact_location(cfg: Mapping[str, Any], uri: str) -> str | None:
    """Local stores keep artifacts in an 'artifacts' folder beside the database; servers decide for themselves."""
    if urlparse(uri).scheme != "sqlite":
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "artifacts" / cfg["mlflow"]["experiment"]).as_uri()


@contextlib.contextmanager
def _sqlite_store_lock(uri: str) -> Iterator[None]:
    """Serialise writes that race in a shared SQLite store: parallel jobs creating its tables, or
    registering the same dataset, at the same moment collide on unique constraints."""
    if urlparse(uri).scheme != "sqlite":
        yield
        return
    import fcntl

    with open(f"{uri.removeprefix('sqlite:///')}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_sqlite_location(uri: str) -> None:
    database = Path(uri.removeprefix("sqlite:///"))
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExperimentError(f"cannot create {database.parent} for the MLflow store: {error.strerror}") from None
    if not os.access(database.parent, os.W_OK):
        raise ExperimentError(f"{database.parent} is not writable; set runs_dir or mlflow.tracking_uri elsewhere")
    if database.exists():
        with open(database, "rb") as stream:
            if database.stat().st_size and not stream.read(16).startswith(b"SQLite format 3"):
                raise ExperimentError(f"{database} is not an SQLite database (mlflow.tracking_uri={uri})")
        foreign = _foreign_tables(database)
        if foreign:
            # MLflow would add its tables to someone else's database.
            raise ExperimentError(
                f"{database} is an SQLite database but not an MLflow store (it holds {', '.join(foreign[:3])}); "
                "choose another file"
            )


def _foreign_tables(database: Path) -> list[str]:
    """The tables of a database MLflow did not create: [] for an empty file or an MLflow store."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error as error:
        raise ExperimentError(f"{database} cannot be read as an SQLite database ({error})") from None
    if not tables or {"alembic_version", "experiments"} <= set(tables):
        return []
    return sorted(tables)


def _check_server_reachable(uri: str) -> None:
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not parsed.hostname or not can_connect(parsed.hostname, port, timeout=SERVER_CONNECT_TIMEOUT_S):
        raise ExperimentError(
            f"cannot reach the MLflow tracking server at {uri} (no answer within {SERVER_CONNECT_TIMEOUT_S:.0f} s)"
        )


def _quiet_mlflow_logging() -> None:
    # MLflow's telemetry would try the network on every run; this machine may have none.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _job_tags(overrides: Sequence[str], parent_run_id: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    """The tags every job's run starts with: overrides, owner, source, git, parent."""
    tags = {
        OVERRIDES_TAG: " ".join(overrides),
        OWNER_TAG: owner(),
        "mlflow.source.name": "python -m mnist_exp",
        "mlflow.source.type": "LOCAL",
        **_git_tags(),
        **(extra or {}),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def _git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(config.PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "mnist_exp.git_dirty": str(dirty).lower()}


def _child_row(run) -> dict[str, Any]:
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "state": run.data.tags.get(STATE_TAG, ""),
        "overrides": run.data.tags.get(OVERRIDES_TAG, ""),
        "final_val_accuracy": metrics.get("final_val_accuracy"),
        "final_val_loss": metrics.get("final_val_loss"),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "epochs": metrics.get("epochs_completed"),
        "failure": run.data.tags.get(FAILURE_TAG, ""),
        **{f"params.{key}": value for key, value in sorted(run.data.params.items())},
    }


def _columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return {key: [row.get(key) for row in rows] for key in keys}


def _job_config(cfg: DictConfig) -> DictConfig:
    return OmegaConf.create(config.plain(cfg))


def _param_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, list, type(None))) else str(value)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)
