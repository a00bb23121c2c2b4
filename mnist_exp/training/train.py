"""Trains and evaluates one model: seed -> build -> fit -> evaluate. No tracking, no files."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mnist_exp.config.model_keys import ModelSpec, model_spec
from mnist_exp.data import Dataset
from mnist_exp.system import collection
from mnist_exp.system.errors import ModelCannotLearn, TrainingDiverged, out_of_memory_is_a_failure
from mnist_exp.system.keras_backend import import_keras, select_backend
from mnist_exp.training.model import build_model, build_optimizer, learning_rate_schedule, model_size
from mnist_exp.training.model_memory import EVALUATION_BATCH, prediction_chunk
from mnist_exp.training.pipeline import InMemoryBatches

# Called after every epoch with (epoch number from 1, metrics); may raise to stop training.
EpochHook = Callable[[int, dict[str, float]], None]
# Called once, as soon as the model is built, with its size (mnist_exp.training.model.model_size).
SizeHook = Callable[[dict[str, float]], None]


@dataclass
class TrainingResult:
    model: Any
    metrics: dict[str, float]
    history: dict[str, list[float]] = field(default_factory=dict)
    # The class predicted for each test image, when cfg.plots asks for pictures of the run.
    test_predictions: np.ndarray | None = None


def train_and_evaluate(cfg: Mapping[str, Any], dataset: Dataset, on_epoch: EpochHook | None = None,
                       on_built: SizeHook | None = None) -> TrainingResult:
    """Fit on the train split, select on validation, score the test split once at the end; the metrics
    include the model's size. Running out of memory anywhere on the way raises OutOfMemory."""
    return prepare(cfg, dataset).run(on_epoch, on_built)


@dataclass(frozen=True)
class PreparedTraining:
    """Keras on the configured backend, seeded, with the optimizer built: what a run checks before it is
    recorded (Keras alone knows which keys its optimizer takes) and then trains with, once."""

    keras: Any
    optimizer: Any
    cfg: Mapping[str, Any]
    dataset: Dataset
    monitored: str  # what early stopping and learning-rate reduction watch (config.monitored_metric)
    model: ModelSpec  # cfg's model group, typed once

    def run(self, on_epoch: EpochHook | None = None, on_built: SizeHook | None = None) -> TrainingResult:
        """train_and_evaluate with this optimizer."""
        with out_of_memory_is_a_failure(f"training model={self.model.name} ({_layer_settings(self.model)}) with "
                                        f"batch_size={self.cfg['batch_size']}"):
            return _train_and_evaluate(self, on_epoch, on_built)


def prepare(cfg: Mapping[str, Any], dataset: Dataset, monitored: str | None = None) -> PreparedTraining:
    """The backend prepared (prepared_backend) and the optimizer, with its learning-rate schedule, built;
    ExperimentError for optimizer settings Keras refuses. `monitored`: the resolved plan's, else worked out
    from `cfg`."""
    from mnist_exp.config import monitored_metric

    keras = prepared_backend(cfg)
    return PreparedTraining(keras, _optimizer(cfg, dataset), cfg, dataset, monitored or monitored_metric(cfg),
                            model_spec(cfg["model"]))


def _optimizer(cfg: Mapping[str, Any], dataset: Dataset):
    steps = cfg["epochs"] * -(-dataset.sizes["train"] // cfg["batch_size"])
    schedule = learning_rate_schedule(cfg["lr_schedule"], float(cfg["optimizer"]["lr"]), steps)
    return build_optimizer(cfg["optimizer"], schedule)


def _train_and_evaluate(prepared: PreparedTraining, on_epoch: EpochHook | None,
                        on_built: SizeHook | None) -> TrainingResult:
    keras, cfg, dataset = prepared.keras, prepared.cfg, prepared.dataset
    model = compiled_model(cfg, dataset, prepared.optimizer, prepared.model)
    size = {key: float(value) for key, value in model_size(model).items()}
    if on_built is not None:
        on_built(size)

    watchdog = _divergence_watch(keras)
    callbacks = [watchdog]
    # Both watch the metric model selection uses; val_loss often rises while val_accuracy still improves.
    from mnist_exp.config import direction

    metric = prepared.monitored
    mode = {"maximize": "max", "minimize": "min"}[direction(metric)]
    if cfg["reduce_lr_patience"]:
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor=metric, mode=mode, factor=0.5, patience=cfg["reduce_lr_patience"], verbose=0,
        ))
    if cfg["early_stopping_patience"]:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=metric, mode=mode, patience=cfg["early_stopping_patience"], restore_best_weights=True,
        ))
    if cfg["min_train_accuracy"] is not None:
        callbacks.append(_stop_at_train_accuracy(keras, cfg["min_train_accuracy"]))
    # Last, so the epoch's logs include what the callbacks above add (the learning rate).
    callbacks.append(_epoch_reporter(keras, dataset.sizes["train"], on_epoch,
                                     log_learning_rate=cfg["lr_schedule"] != "constant"))
    batches = InMemoryBatches(dataset, cfg["seed"], shift=cfg["data"]["augment"],
                              one_hot=len(dataset.class_names) if cfg["label_smoothing"] else None)
    started = time.perf_counter()
    history = model.fit(
        batches.train(cfg["batch_size"]),
        epochs=cfg["epochs"],
        validation_data=batches.val(cfg["batch_size"]),
        shuffle=False,  # the pipeline shuffles, reseeded each epoch
        callbacks=callbacks,
        # A progress bar in a terminal; one line per epoch in logs and CI.
        verbose=1 if sys.stdout.isatty() else 2,
    )
    train_seconds = time.perf_counter() - started
    if watchdog.diverged_at is not None:
        raise TrainingDiverged(
            f"loss became {watchdog.diverged_value} at epoch {watchdog.diverged_at}; "
            f"lower optimizer.lr (now {cfg['optimizer']['lr']})"
        )
    _check_learned(cfg, history.history, dataset.sizes["train"])

    if cfg["early_stopping_patience"]:
        # The kept weights may come from an earlier epoch: score them again.
        val_loss, val_accuracy = model.evaluate(batches.val(EVALUATION_BATCH), verbose=0)
    else:
        val_loss, val_accuracy = history.history["val_loss"][-1], history.history["val_accuracy"][-1]
    test_loss, test_accuracy = model.evaluate(batches.test(EVALUATION_BATCH), verbose=0)
    metrics = {
        "val_loss": float(val_loss),
        "val_accuracy": float(val_accuracy),
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "epochs_completed": float(len(history.history.get("loss", []))),
        "train_seconds": train_seconds,
        **size,
    }
    chunk = prediction_chunk(prepared.model, dataset.x_test.shape[1], len(dataset.class_names))
    predictions = _predicted_classes(model, dataset.x_test, chunk) if cfg["plots"] else None
    return TrainingResult(model=model, metrics=metrics, history=dict(history.history), test_predictions=predictions)


def prepared_backend(cfg: Mapping[str, Any]):
    """Keras on the configured backend, its session cleared and seeded (and deterministic, if asked) for a new
    model; returns the keras module."""
    select_backend(cfg["backend"])
    keras = import_keras()
    collection.freeze_what_imports_made()  # before clear_session()'s full collection
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg["seed"])
    if cfg["deterministic"] and cfg["backend"] == "tensorflow":
        # JAX on CPU is deterministic already; TensorFlow must be told.
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return keras


def compiled_model(cfg: Mapping[str, Any], dataset: Dataset, optimizer=None, spec: ModelSpec | None = None):
    """The model `cfg` describes (`spec`: its model group, typed already), compiled for training as every run
    trains it (with `optimizer`, else a new one as `cfg` sets it)."""
    model = build_model(spec or model_spec(cfg["model"]), input_dim=dataset.x_train.shape[1],
                        num_classes=len(dataset.class_names))
    # Sparse labels: the same categorical cross-entropy, without a one-hot copy of every label. Smoothing needs
    # the one-hot targets (the batches make them), and Keras' sparse loss has no smoothing.
    import keras

    smoothing = cfg["label_smoothing"]
    model.compile(
        optimizer=optimizer if optimizer is not None else _optimizer(cfg, dataset),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if smoothing
        else "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=cfg["jit_compile"],
        steps_per_execution=cfg["steps_per_execution"],
    )
    return model


def _layer_settings(spec: ModelSpec) -> str:
    """The keys that size a model's layers, as overrides: model.hidden_units=[512], model.filters=[32,64] ..."""
    lists = {key.name: getattr(spec, key.name) for key in fields(spec) if isinstance(getattr(spec, key.name), tuple)}
    return " ".join(f"model.{key}=[{','.join(map(str, value))}]" for key, value in lists.items())


def _predicted_classes(model, images: np.ndarray, chunk: int) -> np.ndarray:
    """argmax of the model's output per image, by direct calls: predict() would first trace a function."""
    classes = [
        np.asarray(model(images[start:start + chunk], training=False)).argmax(axis=1)
        for start in range(0, len(images), chunk)
    ]
    return np.concatenate(classes).astype(np.uint8)


def _check_learned(cfg: Mapping[str, Any], history: Mapping[str, list[float]], train_examples: int) -> None:
    """The overfit check: a model that cannot fit even a few hundred examples has a bug, not a tuning problem."""
    threshold = cfg["min_train_accuracy"]
    reached = max(history.get("accuracy", []), default=0.0)
    if threshold is not None and reached < threshold:
        epochs = len(history.get("accuracy", []))
        raise ModelCannotLearn(
            f"the model cannot learn: training accuracy reached {reached:.4f} on {train_examples} examples in "
            f"{epochs} epoch{'' if epochs == 1 else 's'}, below min_train_accuracy={threshold}; "
            "check the data's labels, optimizer.lr and the model"
        )


def _stop_at_train_accuracy(keras, threshold: float):
    class StopAtTrainAccuracy(keras.callbacks.Callback):
        """Ends training at the first epoch whose training accuracy reaches `threshold`: the check has passed."""

        def on_epoch_end(self, epoch, logs=None):
            if float((logs or {}).get("accuracy", 0.0)) >= threshold:
                self.model.stop_training = True

    return StopAtTrainAccuracy()


def _divergence_watch(keras):
    class DivergenceWatch(keras.callbacks.Callback):
        """Stops at the first non-finite batch loss and remembers where it happened."""

        def __init__(self):
            super().__init__()
            self.diverged_at: int | None = None
            self.diverged_value: float | None = None
            self._epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                self.diverged_at, self.diverged_value = self._epoch, float(loss)
                self.model.stop_training = True

    return DivergenceWatch()


def _epoch_reporter(keras, train_examples: int, on_epoch: EpochHook | None, log_learning_rate: bool = False):
    class EpochReporter(keras.callbacks.Callback):
        """Adds epoch wall time and training throughput (and the learning rate a schedule reached, if asked) to
        Keras' logs and hands them to `on_epoch`."""

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_start = self._train_end = time.perf_counter()

        def on_test_begin(self, logs=None):
            # fit() validates after the training steps: this is where the training part of the epoch ends.
            self._train_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            train_seconds = (self._train_end if self._train_end > self._epoch_start else now) - self._epoch_start
            metrics = {key: float(value) for key, value in (logs or {}).items() if _is_number(value)}
            if not all(math.isfinite(value) for value in metrics.values()):
                return  # the divergence watch reports this epoch as a failure
            metrics["epoch_seconds"] = now - self._epoch_start
            if log_learning_rate:
                metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            metrics["samples_per_second"] = train_examples / max(train_seconds, 1e-9)
            if on_epoch is not None:
                on_epoch(epoch + 1, metrics)

    return EpochReporter()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
