"""One training run in MLflow: opened beside training, fed every epoch, closed with a final state.

A run ends FINISHED, FAILED (reason in the mnist_exp.failure tag) or KILLED, never RUNNING; its
mnist_exp.state tag says COMPLETE, PRUNED, FAIL or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mnist_exp import config
from mnist_exp.config.plan import RunPlan
from mnist_exp.data import Dataset
from mnist_exp.system import interrupts
from mnist_exp.system.errors import ExperimentError, RunPruned, StoreFailed
from mnist_exp.system.processes import owner
from mnist_exp.system.redaction import mask
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_inputs import log_inputs, log_params
from mnist_exp.tracking.run_reaper import kill_abandoned_runs
from mnist_exp.tracking.store import Store, connect, store_uri, store_writes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What a run is part of: its parent run (a sweep's), extra tags, and who else watches its epochs."""

    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    # Called after each epoch is recorded, with (epoch from 1, metrics); may raise RunPruned.
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    # False: no pictures for this run whatever its `plots` says (a search's trial, unless the search asked);
    # its recorded config keeps what the user set, so a rerun of it draws them.
    pictures: bool = True


@dataclass
class RunRecorder:
    """Writes one run's epochs and results; handed to training as its per-epoch hook.

    The run is opened in a background thread (MLflow's store is slow to start) while training
    begins; the first call that needs the run waits for it.
    """

    uri: str
    store: Store | None = None
    run_id: str | None = None
    epochs_logged: int = 0
    saving_model: bool = False  # log_model began: a run ending otherwise than FINISHED fails what it left PENDING
    _opening: threading.Thread | None = None
    _open_error: BaseException | None = None
    _unwritten_size: dict[str, float] = field(default_factory=dict)

    @property
    def client(self):
        return self.store.client if self.store is not None else None

    def open_in_background(self, create: Callable[[], tuple[Store, str]],
                           then: Callable[[Store, str], None]) -> None:
        """Open the run in a thread of its own while training begins: `create` makes it and returns (store,
        run id), `then` writes what it starts with; the first call that needs the run waits for both, and
        raises what they raised (the run, if made, is still ended by `end`)."""
        def opening() -> None:
            try:
                self.store, self.run_id = create()
                then(self.store, self.run_id)
            except BaseException as error:  # handed to the main thread by wait_until_open
                self._open_error = error

        self._opening = threading.Thread(target=opening, name="open-mlflow-run", daemon=True)
        self._opening.start()

    def wait_until_open(self) -> None:
        if self._opening is not None:
            self._opening.join()
            self._opening = None
        if self._open_error is not None:
            error, self._open_error = self._open_error, None
            raise error

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.wait_until_open()
        self._log_metrics(metrics, step=epoch)
        self.epochs_logged = epoch
        interrupts.check()

    def log_model_size(self, size: Mapping[str, float]) -> None:
        """The model's size at step 0, sent with the run's next write (the first epoch's, else the ending's):
        waiting here for the run to open would hold training back."""
        self._unwritten_size = dict(size)

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Test and final validation scores, at the step of the last epoch."""
        self.wait_until_open()
        self._log_metrics({
            "test_loss": metrics["test_loss"],
            "test_accuracy": metrics["test_accuracy"],
            # Scores of the model that was kept (the best epoch when early stopping restored it).
            "final_val_loss": metrics["val_loss"],
            "final_val_accuracy": metrics["val_accuracy"],
            "train_seconds": metrics["train_seconds"],
            "epochs_completed": metrics["epochs_completed"],
        }, step=self.epochs_logged)

    def log_model(self, model: Any, dataset: Dataset) -> str:
        """The Keras model as this run's logged model; returns its URI."""
        from mnist_exp.tracking.logged_models import log_keras_model

        self.wait_until_open()
        self.saving_model = True
        with store_writes(self.uri, f"saving the model of run {self.run_id}"):
            try:
                return log_keras_model(self.run_id, model, dataset)
            except OSError as error:  # a full disk, a read-only or vanished artifact folder
                location = self.client.get_run(self.run_id).info.artifact_uri
                raise ExperimentError(
                    f"cannot save the model of run {self.run_id} in {location}: {error.strerror or error}"
                ) from None

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.wait_until_open()
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        # Whole or not at all: Ctrl-C or SIGTERM inside SQLAlchemy's commit can leave SQLite locked by this very
        # process, and the write that records the run KILLED then fails on that lock (the run stays RUNNING).
        with interrupts.deferred(), \
                store_writes(self.uri, f"recording run {self.run_id} (epochs recorded: {self.epochs_logged})"):
            self.client.log_batch(self.run_id, metrics=self._size_points() + points)
            self._unwritten_size = {}  # before a deferred interrupt is raised: end() must not write it again

    def _size_points(self) -> list:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        return [Metric(key, float(value), now, 0) for key, value in self._unwritten_size.items()]

    def end(self, status: str, tags: Mapping[str, str], another_error: bool) -> None:
        """The run's last tags and its final status. A store failing here while `another_error` is on its way
        leaves that error to be reported; the run stays RUNNING until the next start marks it KILLED."""
        from mlflow.entities import RunTag

        if self._opening is not None:
            self._opening.join()
        if self.run_id is None:
            return
        try:
            # One request for the tags (and the model's size when no epoch took it along): against a failing
            # store, every request costs a round of retries.
            with store_writes(self.uri, f"ending run {self.run_id}"):
                ending = [RunTag(key, mask(value)[:run_tags.MAX_TAG_LENGTH]) for key, value in tags.items()]
                self.client.log_batch(self.run_id, metrics=self._size_points(), tags=ending)
                if self.saving_model and status != "FINISHED":
                    # MLflow fails the model it was writing on an Exception only: Ctrl-C or SIGTERM left it PENDING.
                    from mnist_exp.tracking.logged_models import fail_unfinished_models

                    fail_unfinished_models(self.client, self.store.experiment_id, self.run_id)
                self.client.set_terminated(self.run_id, status)
        except StoreFailed:
            if not another_error:
                raise


@contextlib.contextmanager
def record_run(
    cfg: DictConfig, dataset: Dataset, overrides: Sequence[str] = (), context: RunContext | None = None,
    plan: RunPlan | None = None,
) -> Iterator[RunRecorder]:
    """One MLflow run around a training job, never left RUNNING; in the store `plan` resolved, if given."""
    tags = _job_tags(overrides, context or RunContext())
    if dataset.fallback_reason:
        tags[run_tags.FALLBACK_TAG] = dataset.fallback_reason
    recorder = RunRecorder(uri=store_uri(plan or cfg))

    def create() -> tuple[Store, str]:
        store = connect(plan or cfg)
        with store_writes(store.uri, "starting the run"):
            kill_abandoned_runs(store)
            run = store.client.create_run(store.experiment_id, run_name=run_tags.run_name(overrides), tags=tags)
        return store, run.info.run_id

    def write_inputs(store: Store, run_id: str) -> None:
        with store_writes(store.uri, "starting the run"):
            log_inputs(store, run_id, cfg, dataset, overrides)

    recorder.open_in_background(create, write_inputs)
    status, state, ending_tags = "KILLED", "KILLED", {}
    try:
        with interrupts.errors_count_as_interrupt():
            yield recorder
            recorder.wait_until_open()
        status, state = "FINISHED", "COMPLETE"
    except RunPruned as pruned:
        status, state = "FINISHED", "PRUNED"
        ending_tags[run_tags.PRUNED_TAG] = str(pruned)
        raise
    except Exception as error:
        status, state = "FAILED", "FAIL"
        ending_tags[run_tags.FAILURE_TAG] = f"{type(error).__name__}: {error}"
        raise
    finally:
        # KeyboardInterrupt and SystemExit land here as KILLED. The closing writes are not interrupted.
        with interrupts.deferred():
            another_error = sys.exc_info()[1] is not None
            recorder.end(status, {**ending_tags, run_tags.STATE_TAG: state}, another_error)


def record_failed_job(cfg: DictConfig, overrides: Sequence[str], context: RunContext, error: Exception) -> None:
    """A FAILED child for a sweep job that stopped before training (bad value, bad data file)."""
    try:
        store = connect(cfg)
    except ExperimentError:
        return  # the store itself is the problem; the job's error line says so
    tags = {
        **_job_tags(overrides, context),
        run_tags.FAILURE_TAG: f"{type(error).__name__}: {error}"[:run_tags.MAX_TAG_LENGTH],
        run_tags.STATE_TAG: "FAIL",
    }
    run = store.client.create_run(store.experiment_id, run_name=run_tags.run_name(overrides), tags=tags)
    log_params(store.client, run.info.run_id, config.flatten(cfg))
    store.client.set_terminated(run.info.run_id, "FAILED")


def _job_tags(overrides: Sequence[str], context: RunContext) -> dict[str, str]:
    """The tags every job's run starts with: overrides, owner, source, git, parent."""
    tags = {
        run_tags.OVERRIDES_TAG: mask(" ".join(overrides)),
        run_tags.OWNER_TAG: owner(),
        "mlflow.source.name": "python -m mnist_exp",
        "mlflow.source.type": "LOCAL",
        **run_tags.source_tags(),
        **context.tags,
    }
    if context.parent_run_id:
        tags["mlflow.parentRunId"] = context.parent_run_id
    return tags
