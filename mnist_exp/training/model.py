"""Builds the Keras model and optimizer a config describes, and measures a built model's size."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_exp.config import OPTIMIZERS
from mnist_exp.config.model_keys import CnnSpec, MlpSpec, ModelSpec
from mnist_exp.system.errors import ExperimentError


def build_mlp(spec: MlpSpec, *, input_dim: int = 784, num_classes: int = 10):
    """Pixels scaled to [0, 1], Dense(w, activation) [-> Dropout] per hidden width, Dense(num_classes, softmax)."""
    import keras

    # Scaling inside the model keeps the dataset as uint8 (a quarter of float32's memory), and the
    # saved model takes raw 0-255 pixels, as images come.
    layers = [
        keras.Input(shape=(input_dim,), dtype="uint8", name="pixels"),
        keras.layers.Rescaling(1 / 255, name="scale"),
    ]
    dense = _dense_layers(keras, spec.hidden_units, spec.activation, spec.dropout, num_classes)
    return keras.Sequential(layers + dense, name="mlp")


def _dense_layers(keras, widths: Sequence[int], activation: str, dropout: float, num_classes: int) -> list:
    """Dense(w, activation) [-> Dropout] per width, then Dense(num_classes, softmax): both models end so."""
    layers = []
    for index, width in enumerate(widths, start=1):
        layers.append(keras.layers.Dense(width, activation=activation, name=f"hidden_{index}"))
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"dropout_{index}"))
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="probabilities"))
    return layers


def build_cnn(spec: CnnSpec, *, input_dim: int = 784, num_classes: int = 10):
    """A convolutional network on the same flat uint8 pixels as the MLP, reshaped to a square one-channel image
    and scaled inside: per entry of `filters`, Conv2D(f, kernel_size, same padding) [-> BatchNormalization] ->
    activation [-> 2x2 pooling while the map is at least 2 wide] [-> Dropout]; then Flatten, Dense(w, activation)
    [-> Dropout] per entry of `dense_units`, and Dense(num_classes, softmax)."""
    import keras

    kernel_size, activation, dropout, batch_norm = spec.kernel_size, spec.activation, spec.dropout, spec.batch_norm
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ExperimentError(f"model=cnn needs square images; these have {input_dim} pixels")
    pool = {"max": keras.layers.MaxPooling2D, "average": keras.layers.AveragePooling2D, "none": None}[spec.pooling]
    layers = [
        keras.Input(shape=(input_dim,), dtype="uint8", name="pixels"),
        # Inside the model, so the saved model takes what the MLP takes: predict, serve and the signature agree.
        keras.layers.Reshape((side, side, 1), name="image"),
        keras.layers.Rescaling(1 / 255, name="scale"),
    ]
    for index, count in enumerate(spec.filters, start=1):
        # A bias before batch normalisation is cancelled by its mean.
        layers.append(keras.layers.Conv2D(count, kernel_size, padding="same", use_bias=not batch_norm,
                                          name=f"conv_{index}"))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization(name=f"batch_norm_{index}"))
        layers.append(keras.layers.Activation(activation, name=f"{activation}_{index}"))
        if pool is not None and side >= 2:
            layers.append(pool(2, name=f"pool_{index}"))
            side //= 2
        if dropout > 0:
            layers.append(keras.layers.Dropout(dropout, name=f"conv_dropout_{index}"))
    layers.append(keras.layers.Flatten(name="flatten"))
    return keras.Sequential(layers + _dense_layers(keras, spec.dense_units, activation, dropout, num_classes),
                            name="cnn")


def build_model(spec: ModelSpec, *, input_dim: int, num_classes: int):
    """The model conf/model/<name>.yaml describes, checked and typed (mnist_exp.config.model_keys.model_spec)."""
    return MODELS[spec.name](spec, input_dim=input_dim, num_classes=num_classes)


def model_size(model) -> dict[str, int]:
    """A built model's `parameters` (trainable weights) and `macs_per_example` (multiply-accumulates of one
    forward pass of one example).

    Counted: Dense (input features x units at each position), Conv1D/2D/3D (kernel size x input channels per
    group x filters at each output position), DepthwiseConv1D/2D and SeparableConv1D/2D (each of their kernels
    likewise); nested models layer by layer. Every other layer counts 0: Rescaling, Dropout, pooling, Flatten,
    activations and BatchNormalization multiply no inputs by a weight matrix, and a layer this does not know
    (recurrent, transposed convolution, attention) is left out rather than guessed. Biases count as
    parameters, not as multiply-accumulates.
    """
    import keras

    parameters = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return {"parameters": int(parameters), "macs_per_example": _macs(keras, model)}


def _macs(keras, model) -> int:
    layers = keras.layers
    counted = (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.DepthwiseConv1D,
               layers.DepthwiseConv2D, layers.SeparableConv1D, layers.SeparableConv2D)
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _macs(keras, layer)
        elif isinstance(layer, counted):
            # Each kernel weight multiplies once at every output position (every pixel of a feature map).
            shape = layer.output.shape
            positions = shape[2:] if getattr(layer, "data_format", None) == "channels_first" else shape[1:-1]
            kernels = [layer.depthwise_kernel, layer.pointwise_kernel] if isinstance(
                layer, (layers.SeparableConv1D, layers.SeparableConv2D)) else [layer.kernel]
            total += sum(math.prod(kernel.shape) for kernel in kernels) * math.prod(positions)
    return int(total)


# Each conf/model/*.yaml names one of these; the builder takes its schema (mnist_exp.config.model_keys).
MODELS = {MlpSpec.name: build_mlp, CnnSpec.name: build_cnn}


ONE_CYCLE_WARMUP = 0.3  # the share of the steps one_cycle spends rising to optimizer.lr
ONE_CYCLE_START = 1 / 25  # where it starts, as a fraction of optimizer.lr


def learning_rate_schedule(kind: str, lr: float, total_steps: int):
    """None for a constant learning rate, else the keras schedule `kind` (cosine, one_cycle) over `total_steps`.

    Keras' own CosineDecay (with its linear warm-up for one_cycle): a saved model's optimizer loads back without
    custom objects."""
    import keras

    if kind == "constant":
        return None
    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps)
    if kind != "one_cycle":  # config.LR_SCHEDULES: a checked config never gets here
        raise ValueError(f"unknown learning-rate schedule {kind!r}")
    warmup = max(1, round(ONE_CYCLE_WARMUP * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        lr * ONE_CYCLE_START, decay_steps=max(1, total_steps - warmup), warmup_target=lr, warmup_steps=warmup
    )


def build_optimizer(optimizer_cfg: Mapping[str, Any], schedule=None):
    """A keras.optimizers instance; `lr` becomes learning_rate (or `schedule`, a keras schedule, takes its place),
    every other key passes through by its name."""
    import keras

    name = optimizer_cfg["name"]  # one of config.OPTIMIZERS: the config is checked
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
        return optimizer_class(learning_rate=schedule or float(optimizer_cfg["lr"]), **options)
    except (TypeError, ValueError) as error:
        raise ExperimentError(f"optimizer={name}: {class_name} rejects these settings: {error}") from None
