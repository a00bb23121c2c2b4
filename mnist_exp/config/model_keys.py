"""The keys of each model's config group (conf/model/<name>.yaml) and the checks of their values; mnist_exp.config
applies them by the model's name."""

from __future__ import annotations

from typing import Any

from mnist_exp.config.config_checks import Check, boolean, integer, number, one_of

# The models mnist_exp.training.model.MODELS builds, by the name their conf/model/<name>.yaml gives.
MODEL_NAMES = ("mlp", "cnn")
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


MODEL_KEYS: dict[str, dict[str, Check]] = {
    "mlp": {
        "name": one_of(*MODEL_NAMES),
        "hidden_units": counts(MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, "[256,128]"),
        "activation": one_of(*ACTIVATIONS),
        "dropout": DROPOUT,
    },
    "cnn": {
        "name": one_of(*MODEL_NAMES),
        "filters": counts(MAX_CONV_BLOCKS, MAX_FILTERS, "[32,64]"),
        "kernel_size": integer(1, 28),
        "pooling": one_of(*POOLINGS),
        "dense_units": counts(MAX_HIDDEN_LAYERS, MAX_LAYER_WIDTH, "[128]", may_be_empty=True),
        "activation": one_of(*ACTIVATIONS),
        "dropout": DROPOUT,
        "batch_norm": boolean,
    },
}
