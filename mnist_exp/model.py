"""Builds the Keras model and optimizer a config describes."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_exp.errors import ExperimentError

# The optimizers a conf/optimizer/*.yaml can name (its `name:`), each with its keras.optimizers class:
# a new optimizer is a YAML file, plus a line here when Keras has it and it is not listed yet.
OPTIMIZERS = {
    "sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad", "adadelta": "Adadelta",
    "adamax": "Adamax", "nadam": "Nadam", "lion": "Lion", "ftrl": "Ftrl", "adafactor": "Adafactor", "lamb": "Lamb",
}


def build_mlp(
    hidden_units: Sequence[int],
    activation: str,
    dropout: float,
    *,
    input_dim: int = 784,
    num_classes: int = 10,
):
    """Pixels scaled to [0, 1], Dense(w, activation) [-> Dropout] per hidden width, Dense(num_classes, softmax)."""
    import keras

    # Scaling inside the model keeps the dataset as uint8 (a quarter of float32's memory), and the
    # saved model takes raw 0-255 pixels, as images come.
    layers = [
        keras.Input(shape=(input_dim,), dtype="uint8", name="pixels"),
        keras.layers.Rescaling(1 / 255, name="scale"),
    ]
    for index, width in enumerate(hidden_units, start=1):
        layers.append(keras.layers.Dense(width, activation=activation, name=f"hidden_{index}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{index}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="probabilities"))
    return keras.Sequential(layers, name="mlp")


def build_optimizer(optimizer_cfg: Mapping[str, Any]):
    """A keras.optimizers instance; `lr` becomes learning_rate, every other key passes through by its name."""
    import keras

    name = optimizer_cfg["name"]
    if name not in OPTIMIZERS:
        raise ExperimentError(f"optimizer.name={name!r} is invalid: expected one of {', '.join(OPTIMIZERS)}")
    class_name = f"keras.optimizers.{OPTIMIZERS[name]}"
    optimizer_class = getattr(keras.optimizers, OPTIMIZERS[name], None)
    if optimizer_class is None:
        raise ExperimentError(f"optimizer.name={name} needs {class_name}, which Keras {keras.__version__} lacks")
    # YAML and the command line turn `lr=1` into an int; Keras insists on floats.
    options = {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in optimizer_cfg.items() if key not in ("name", "lr")
    }
    # Checked here rather than left to Keras: its error names neither the config key nor the class.
    accepted = [
        parameter.name for parameter in inspect.signature(optimizer_class).parameters.values()
        if parameter.kind != parameter.VAR_KEYWORD and parameter.name not in ("learning_rate", "name")
    ]
    for key in options:
        if key not in accepted:
            raise ExperimentError(
                f"optimizer.{key} is not a known key of {class_name}; it takes lr, {', '.join(accepted)}"
            )
    try:
        return optimizer_class(learning_rate=float(optimizer_cfg["lr"]), **options)
    except (TypeError, ValueError) as error:
        raise ExperimentError(f"optimizer={name}: {class_name} rejects these settings: {error}") from None
