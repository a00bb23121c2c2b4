"""Builds the Keras model and optimizer a config describes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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
    """A keras.optimizers instance; `lr` becomes learning_rate, every other key passes through."""
    import keras

    classes = {
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
    }
    # YAML and the command line turn `lr=1` into an int; Keras insists on floats.
    options = {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in optimizer_cfg.items() if key not in ("name", "lr")
    }
    return classes[optimizer_cfg["name"]](learning_rate=float(optimizer_cfg["lr"]), **options)
