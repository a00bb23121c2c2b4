"""Each model's keys, listed once: a typed schema per conf/model/<name>.yaml, whose fields carry the checks of their
values (mnist_exp.config applies them by the model's name) and which the builders take once it is checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import ListConfig

from mnist_exp.config.config_checks import Check, boolean, integer, number, one_of

# Activations Keras 3 knows by name; checked here so a typo fails before TensorFlow loads.
ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "mish",
    "tanh", "sigmoid", "hard_sigmoid", "softplus", "softsign", "exponential", "linear",
)
MAX_LAYER_WIDTH = 65_536
MAX_HIDDEN_LAYERS = 64
MAX_CONV_BLOCKS = 16
MAX_FILTERS = 4096
POOLINGS = ("max", "average", "none")
DROPOUT = number(0, 1, high_open=True)


def counts(most: int, largest: int, example: str, may_be_empty: bool = False) -> Check:
    """A list of at most `most` integers from 1 to `largest` (layer widths, filter counts)."""
    allowed = (f"a {'' if may_be_empty else 'non-empty '}list of at most {most} integers from 1 to {largest}, "
               f"e.g. {example}{', or []' if may_be_empty else ''}")

    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or not (0 if may_be_empty else 1) <= len(value) <= most:
            return allowed
        return None if all(integer(1, largest)(count) is None for count in value) else allowed
    return check


def checked(check: Check) -> Any:
    """A schema field whose values `check` accepts (every field is required: the YAML gives each a default)."""
    return field(metadata={"check": check})


@dataclass(frozen=True)
class MlpSpec:
    """conf/model/mlp.yaml: Dense(w, activation) [-> Dropout] per hidden width, then Dense(classes, softmax)."""

    name: ClassVar[str] = "mlp"
    hidden_units: tuple[int, ...] = checked(counts(MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, "[256,128]"))
    activation: str = checked(one_of(*ACTIVATIONS))
    dropout: float = checked(DROPOUT)


@dataclass(frozen=True)
class CnnSpec:
    """conf/model/cnn.yaml: convolution blocks, then dense layers, then Dense(classes, softmax)."""

    name: ClassVar[str] = "cnn"
    filters: tuple[int, ...] = checked(counts(MAX_CONV_BLOCKS, MAX_FILTERS, "[32,64]"))
    kernel_size: int = checked(integer(1, 28))
    pooling: str = checked(one_of(*POOLINGS))
    dense_units: tuple[int, ...] = checked(counts(MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, "[128]", may_be_empty=True))
    activation: str = checked(one_of(*ACTIVATIONS))
    dropout: float = checked(DROPOUT)
    batch_norm: bool = checked(boolean)


ModelSpec = MlpSpec | CnnSpec
# A new model: its conf/model/<name>.yaml, its schema here, its builder in mnist_exp.training.model.MODELS.
MODEL_SPECS: dict[str, type[ModelSpec]] = {spec.name: spec for spec in (MlpSpec, CnnSpec)}
MODEL_NAMES = tuple(MODEL_SPECS)
MODEL_KEYS: dict[str, dict[str, Check]] = {
    name: {"name": one_of(*MODEL_NAMES), **{key.name: key.metadata["check"] for key in fields(spec)}}
    for name, spec in MODEL_SPECS.items()
}


def model_spec(model_values: Mapping[str, Any]) -> ModelSpec:
    """The typed model of a checked config's `model` group (lists become tuples: the spec is frozen)."""
    spec = MODEL_SPECS[model_values["name"]]
    return spec(**{key.name: _frozen(model_values[key.name]) for key in fields(spec)})


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple, ListConfig)) else value
