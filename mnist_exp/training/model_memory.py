"""The memory a model will need, reckoned from its config before TensorFlow loads, against what this process may use.

Plain arithmetic over the layers conf/model/<name>.yaml describes (mnist_exp.training.model builds the same layers):
the weights, one gradient per trainable weight, the optimizer's slots, the activations of a training batch
(kept for the backward pass, and their gradients), of the largest evaluation or prediction batch, and the
data. It is a floor, not a forecast: TensorFlow's own buffers come on top. A config whose floor does not fit
is refused in one line before anything is built; one that passes and still runs out is caught while it
trains (mnist_exp.system.errors.out_of_memory_is_a_failure).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_exp.config.model_keys import CnnSpec, MlpSpec, ModelSpec, model_spec
from mnist_exp.system import memory_limits
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.memory_limits import GIB, Budget

EVALUATION_BATCH = 1024
# Images per direct model call (the run's pictures): at most PREDICTION_CHUNK, and fewer when the activations one
# call holds would pass PREDICTION_MEMORY (wide convolutions keep a feature map per filter and image).
PREDICTION_CHUNK = 4096
PREDICTION_MEMORY = 256 * 2**20

BYTES_PER_VALUE = 4  # float32 weights, gradients, slots and activations
MIB = 2**20
# Keras 3's slot variables per trainable weight, by optimizer (mnist_exp.config.OPTIMIZERS); a setting can add
# one (optimizer_slots). Adafactor keeps factored row and column statistics: next to nothing for a matrix.
OPTIMIZER_SLOTS = {
    "sgd": 0, "rmsprop": 1, "adam": 2, "adamw": 2, "adagrad": 1, "adadelta": 2, "adamax": 2, "nadam": 2,
    "lion": 1, "ftrl": 2, "adafactor": 0, "lamb": 2,
}


@dataclass(frozen=True)
class Layer:
    """One layer as the estimate sees it: the config key that sizes it, its weights, its outputs per example."""

    key: str
    parameters: int = 0
    trainable: int = 0
    outputs: int = 0  # values per example it hands on (and keeps for the backward pass)


@dataclass(frozen=True)
class Estimate:
    """Bytes a training run of one model needs beyond the framework, in parts."""

    weights: int
    gradients: int
    slots: int
    training_batch: int
    inference_batch: int
    data: int
    largest_key: str  # the model key whose layers take the most of it

    @property
    def total(self) -> int:
        # Training and inference batches do not coexist: the larger of them.
        return (self.weights + self.gradients + self.slots + max(self.training_batch, self.inference_batch)
                + self.data)


def model_layers(spec: ModelSpec, input_dim: int, num_classes: int) -> list[Layer]:
    """The layers mnist_exp.training.model.build_model makes for `spec`, as parameter and output counts."""
    return LAYERS[spec.name](spec, input_dim, num_classes)


def _mlp(spec: MlpSpec, input_dim: int, num_classes: int) -> list[Layer]:
    return [Layer("input", outputs=input_dim)] + _dense(spec.hidden_units, "hidden_units", input_dim, spec.dropout,
                                                        num_classes)


def _dense(widths: Sequence[int], key: str, inputs: int, dropout: float, num_classes: int,
           output_key: str | None = None) -> list[Layer]:
    layers = []
    for width in widths:
        weights = inputs * width + width
        # Dense keeps its product before the activation and the activation's output.
        layers.append(Layer(key, weights, weights, 2 * width))
        if dropout > 0:
            layers.append(Layer(key, outputs=width))
        inputs = width
    weights = inputs * num_classes + num_classes
    layers.append(Layer(output_key or key, weights, weights, 2 * num_classes))
    return layers


def _cnn(spec: CnnSpec, input_dim: int, num_classes: int) -> list[Layer]:
    side = math.isqrt(input_dim)
    kernel, batch_norm, pooled, dropout = spec.kernel_size, spec.batch_norm, spec.pooling != "none", spec.dropout
    layers, channels = [Layer("input", outputs=input_dim)], 1
    for count in spec.filters:
        weights = kernel * kernel * channels * count + (0 if batch_norm else count)
        layers.append(Layer("filters", weights, weights, side * side * count))
        if batch_norm:  # gamma and beta are trained; the moving mean and variance are not
            layers.append(Layer("filters", 4 * count, 2 * count, side * side * count))
        layers.append(Layer("filters", outputs=side * side * count))  # the activation
        if pooled and side >= 2:
            side //= 2
            layers.append(Layer("filters", outputs=side * side * count))
        if dropout > 0:
            layers.append(Layer("filters", outputs=side * side * count))
        channels = count
    dense_units = spec.dense_units
    # The first dense layer (or the output) is as wide as the last feature map is large: its weights grow with the
    # filters as much as with its own width.
    return layers + _dense(dense_units, "dense_units", side * side * channels, dropout, num_classes,
                           output_key="dense_units" if dense_units else "filters")


def _forward_peak(layers: Sequence[Layer]) -> int:
    """Bytes per example at the peak of a forward pass alone: a layer's input and output are alive together."""
    pairs = [a.outputs + b.outputs for a, b in itertools.pairwise(layers)] or [layers[0].outputs]
    return max(pairs) * BYTES_PER_VALUE


def inference_bytes_per_example(spec: ModelSpec, input_dim: int, num_classes: int) -> int:
    """The activations one example holds at the peak of a forward pass (evaluation, prediction)."""
    return _forward_peak(model_layers(spec, input_dim, num_classes))


# Per model of mnist_exp.training.model.MODELS, its layers; a model missing here is not checked before training.
LAYERS = {MlpSpec.name: _mlp, CnnSpec.name: _cnn}


def parameter_count(spec: ModelSpec, input_dim: int = 784, num_classes: int = 10) -> int:
    """Every weight of the model (Keras' count_params(): trainable or not)."""
    return sum(layer.parameters for layer in model_layers(spec, input_dim, num_classes))


def optimizer_slots(optimizer_cfg: Mapping[str, Any]) -> int:
    """Slot variables the optimizer keeps per trainable weight (Adam: two moments; SGD: momentum, if any)."""
    name = optimizer_cfg["name"]
    slots = OPTIMIZER_SLOTS.get(name, 2)
    if name in ("sgd", "rmsprop") and optimizer_cfg.get("momentum", 0):
        slots += 1
    if optimizer_cfg.get("centered") or optimizer_cfg.get("amsgrad"):
        slots += 1
    if optimizer_cfg.get("use_ema"):
        slots += 1
    return slots


def prediction_chunk(spec: ModelSpec, input_dim: int, num_classes: int) -> int:
    """How many images one direct call of the model may take: PREDICTION_CHUNK, fewer for wide models."""
    if spec.name not in LAYERS:
        return PREDICTION_CHUNK
    per_image = inference_bytes_per_example(spec, input_dim, num_classes)
    return max(1, min(PREDICTION_CHUNK, PREDICTION_MEMORY // per_image))


def estimate(cfg: Mapping[str, Any], *, input_dim: int, num_classes: int, inference_examples: int,
             data_bytes: int) -> Estimate:
    """What training `cfg`'s model needs: `inference_examples` is the most examples one evaluation or prediction
    call takes (EVALUATION_BATCH, prediction_chunk, or a smaller split)."""
    layers = model_layers(model_spec(cfg["model"]), input_dim, num_classes)
    parameters = sum(layer.parameters for layer in layers)
    trainable = sum(layer.trainable for layer in layers)
    slots = optimizer_slots(cfg["optimizer"])
    batch = cfg["batch_size"]
    # Forward values kept for the backward pass, and as many gradients flowing back through them.
    training = 2 * batch * sum(layer.outputs for layer in layers) * BYTES_PER_VALUE
    inference = inference_examples * _forward_peak(layers)
    share: dict[str, float] = {}
    for layer in layers:
        bytes_ = (layer.parameters + layer.trainable * (1 + slots) + 2 * batch * layer.outputs) * BYTES_PER_VALUE
        share[layer.key] = share.get(layer.key, 0) + bytes_
    return Estimate(
        weights=parameters * BYTES_PER_VALUE,
        gradients=trainable * BYTES_PER_VALUE,
        slots=slots * trainable * BYTES_PER_VALUE,
        training_batch=training,
        inference_batch=inference,
        data=data_bytes,
        largest_key=max(share, key=share.get),
    )


def distinct_bytes(arrays: Iterable[np.ndarray]) -> int:
    """Bytes the arrays hold, each buffer once (the validation split is a view of the training array)."""
    roots = {}
    for array in arrays:
        while isinstance(array.base, np.ndarray):
            array = array.base
        roots[id(array)] = array.nbytes
    return sum(roots.values())


def check_fits(cfg: Mapping[str, Any], dataset, budget: Budget | None = None) -> Estimate | None:
    """Refuse, in one line naming the model key that makes it big, a config whose model cannot fit in what this
    process may use; returns the estimate (None for a model LAYERS does not know)."""
    if cfg["model"]["name"] not in LAYERS:
        return None
    sizes, input_dim, num_classes = dataset.sizes, dataset.x_test.shape[1], len(dataset.class_names)
    inference = min(EVALUATION_BATCH, max(sizes["val"], sizes["test"]))
    if cfg["plots"]:
        inference = max(inference, min(prediction_chunk(model_spec(cfg["model"]), input_dim, num_classes),
                                       sizes["test"]))
    need = estimate(
        cfg, input_dim=input_dim, num_classes=num_classes, inference_examples=inference,
        data_bytes=distinct_bytes([dataset.images, dataset.labels, dataset.x_test, dataset.y_test]),
    )
    budget = budget or memory_limits.process_budget()
    if budget is None:
        return need
    if budget.for_the_work <= 0:
        raise ExperimentError(
            f"this process may use {_size(budget.limit)} ({budget.source}), and TensorFlow alone takes about "
            f"{_size(budget.framework)}: raise the limit"
        )
    if need.total > budget.for_the_work:
        raise ExperimentError(
            f"{_key_setting(cfg, need.largest_key)} needs about {_size(need.total)} for weights, optimizer state "
            f"and a batch of {cfg['batch_size']}, besides the {_size(budget.framework)} TensorFlow takes; this "
            f"process may use {_size(budget.limit)} ({budget.source})"
        )
    return need


def _key_setting(cfg: Mapping[str, Any], key: str) -> str:
    model = cfg["model"]
    if key == "input":  # only a tiny model's activations: the batch makes it big
        return f"batch_size={cfg['batch_size']}"
    setting = f"model.{key}={list(model[key])}"
    if key == "filters":
        setting += f" with model.kernel_size={model['kernel_size']}"
    return setting


def _size(count: float) -> str:
    if count >= 10 * GIB:
        return f"{count / GIB:.0f} GiB"
    if count >= GIB:
        return f"{count / GIB:.1f} GiB"
    return f"{max(0.0, count) / MIB:.0f} MiB"
