"""Checks a composed config before anything heavy is imported (its paths: config/paths.py).

Hydra already rejects unknown group options and unknown keys; this module rejects values that compose
fine but cannot work (`epochs=0`, `epochs=abc`, `optimizer.lr=-1`, `'model.hidden_units=[]'`, ...),
naming the key and what is allowed.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mnist_exp.config.config_checks import Check, boolean, integer, number, one_of, optional, text
from mnist_exp.config.model_keys import MODEL_KEYS
from mnist_exp.config.module_lookup import module_found
from mnist_exp.system.errors import ExperimentError

# The optimizers a conf/optimizer/*.yaml can name (its `name:`), each with its keras.optimizers class:
# a new optimizer is a YAML file, plus a line here when Keras has it and it is not listed yet.
OPTIMIZERS = {
    "sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad", "adadelta": "Adadelta",
    "adamax": "Adamax", "nadam": "Nadam", "lion": "Lion", "ftrl": "Ftrl", "adafactor": "Adafactor", "lamb": "Lamb",
}
# The MLflow metrics mnist_exp.training.model.model_size returns, each logged once per run; smaller is better.
SIZE_METRICS = ("parameters", "macs_per_example")

# How a picture is laid out in the 28x28 frame (mnist_exp.data.images): a 20x20 box centred by mass, as
# MNIST was made, or the object filling the frame, as Fashion-MNIST was.
PICTURE_LAYOUTS = ("digit", "fill")
# The only dataset whose offline fallback (mnist_sample, a sample of its own digits) is a fair stand-in.
MNIST_LOADER = "mnist_exp.data.sources:load_mnist"
BACKENDS = ("tensorflow", "jax")
# What a run or search can optimise, and which way; a search may take a list of them (several objectives).
OPTIMIZED_METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", **dict.fromkeys(SIZE_METRICS, "minimize")}
EPOCH_METRICS = ("val_accuracy", "val_loss")  # those that change during training (callbacks can watch them)
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
MAX_EXPERIMENT_NAME_LENGTH = 500  # MLflow's limit (mlflow.utils.validation)
MAX_MODEL_NAME_LENGTH = 250
MAX_SHIFT = 8  # pixels: data.augment moves images a little, it does not crop them away
LR_SCHEDULES = ("constant", "cosine", "one_cycle")
MAX_REPEATS = 1000

def _one_of_values(*allowed: Any) -> Check:
    def check(value: Any) -> str | None:
        ok = any(value is option or (isinstance(option, str) and value == option) for option in allowed)
        return None if ok else "one of " + ", ".join(_show(option) for option in allowed)
    return check


def _identifier(value: Any) -> str | None:
    return None if isinstance(value, str) and value.isidentifier() else "a name of letters, digits and _"


def _setting(value: Any) -> str | None:
    ok = isinstance(value, bool) or (isinstance(value, (int, float)) and math.isfinite(value))
    return None if ok else "a finite number or true/false"


def _class_names(value: Any) -> str | None:
    ok = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value)
    return None if ok else "a non-empty list of class names (strings), one per label, e.g. ['0', '1', ...]"


def _loader(value: Any) -> str | None:
    allowed = f"module:function, e.g. {MNIST_LOADER}"
    if not isinstance(value, str) or not re.fullmatch(r"\w+(\.\w+)*:\w+", value):
        return allowed
    module = value.split(":")[0]
    return None if module_found(module) else f"module:function whose module can be found; {module} cannot be found"


def tracking_uri_problem(value: Any) -> str | None:
    """None for a tracking URI mnist-exp can use (or null: the local store), else what is allowed."""
    allowed = "null (the local SQLite store) or a URI starting with " + ", ".join(f"{s}:" for s in TRACKING_SCHEMES)
    if value is None:
        return None
    if not isinstance(value, str) or value.split(":", 1)[0].split("+", 1)[0] not in TRACKING_SCHEMES:
        return allowed
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):
        # Relative to wherever the command is started: runs would scatter over launch directories.
        return "an absolute SQLite path, sqlite:////abs/path.db (four slashes), or null"
    return None


def name_problem(value: Any, limit: int, forbidden: str = "/\\") -> str | None:
    """None for a name that can only ever be a name (it also becomes a folder or file name somewhere),
    else what is allowed."""
    allowed = f"a name of at most {limit} characters without {' or '.join(forbidden)}, not . or .."
    ok = (
        isinstance(value, str) and value.strip() and len(value) <= limit and value not in (".", "..")
        and not any(character in value for character in forbidden) and "\0" not in value
    )
    return None if ok else allowed


def _experiment_name(value: Any) -> str | None:
    return name_problem(value, MAX_EXPERIMENT_NAME_LENGTH)


def _model_name(value: Any) -> str | None:
    return None if value is None else name_problem(value, MAX_MODEL_NAME_LENGTH, forbidden="/\\:")


def _objectives(value: Any) -> str | None:
    if isinstance(value, str) and value in OPTIMIZED_METRICS:
        return None
    several = isinstance(value, list) and len(value) >= 2 and len(set(map(str, value))) == len(value)
    if several and all(isinstance(v, str) and v in OPTIMIZED_METRICS for v in value):
        return None
    return f"one of {', '.join(OPTIMIZED_METRICS)}, or a list of two or more of them (objectives of a search)"


_UNIT_OPEN = number(0, 1, high_open=True)

TOP_LEVEL: dict[str, Check] = {
    "epochs": integer(1, 100_000),
    "batch_size": integer(1, 1_000_000),
    "seed": integer(0, 2**32 - 1),
    "repeats": integer(1, MAX_REPEATS),
    "early_stopping_patience": optional(integer(1, 100_000)),
    "reduce_lr_patience": optional(integer(1, 100_000)),
    "deterministic": boolean,
    "optimized_metric": _objectives,
    "runs_dir": text,
    "backend": one_of(*BACKENDS),
    "jit_compile": _one_of_values("auto", True, False),
    "steps_per_execution": integer(1, 10_000),
    "plots": boolean,
    "train_subset": optional(integer(1, 100_000_000)),
    "min_train_accuracy": optional(number(0, 1, low_open=True)),
    "label_smoothing": number(0, 1, high_open=True),
    "lr_schedule": one_of(*LR_SCHEDULES),
}
# Every optimizer has a name and a learning rate; its other keys are checked by name, whichever optimizer has
# them, and any key not listed here must be a finite number or a boolean. Whether the optimizer takes a key
# is Keras' to say, when the optimizer is built (mnist_exp.training.model.build_optimizer).
OPTIMIZER_KEYS: dict[str, Check] = {
    "name": one_of(*OPTIMIZERS),
    "lr": number(0, 10, low_open=True),
}
OPTIMIZER_SETTINGS: dict[str, Check] = {
    "momentum": _UNIT_OPEN,
    "rho": _UNIT_OPEN,
    "beta_1": _UNIT_OPEN,
    "beta_2": _UNIT_OPEN,
    "epsilon": number(0, 1, low_open=True),
    "weight_decay": number(0, 1),
    "nesterov": boolean,
    "amsgrad": boolean,
}
DATA_KEYS: dict[str, Check] = {
    "name": _identifier,
    "loader": _loader,
    "class_names": _class_names,
    "picture_layout": one_of(*PICTURE_LAYOUTS),
    "path": optional(text),
    "allow_fallback": boolean,
    "val_fraction": number(0, 0.9, low_open=True),
    "cache": boolean,
    "augment": integer(0, MAX_SHIFT),
}
MLFLOW_KEYS: dict[str, Check] = {
    "tracking_uri": tracking_uri_problem,
    "experiment": _experiment_name,
    "log_model": boolean,
    "registered_model": _model_name,
}


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise ExperimentError naming the first key whose value cannot work."""
    values = plain(cfg)
    for section in ("optimizer", "model", "data", "mlflow"):
        if not isinstance(values.get(section), dict):
            raise ExperimentError(f"config group '{section}' is missing; choose it with {section}=<option>")
    settings = {
        key: OPTIMIZER_SETTINGS.get(key, _setting)
        for key, value in values["optimizer"].items() if key not in OPTIMIZER_KEYS and not isinstance(value, Mapping)
    }
    model = values["model"].get("name")
    if model not in MODEL_KEYS:
        raise ExperimentError(f"model.name={_show(model)} is invalid: expected one of {', '.join(MODEL_KEYS)}")
    schema = {
        **TOP_LEVEL,
        **_prefixed("optimizer", {**OPTIMIZER_KEYS, **settings}),
        **_prefixed("model", MODEL_KEYS[model]),
        **_prefixed("data", DATA_KEYS),
        **_prefixed("mlflow", MLFLOW_KEYS),
    }
    present = dict(_leaves(values))
    for key in present.keys() - schema.keys() - {"hydra"}:
        raise ExperimentError(f"{key} is not a known key; known keys: {', '.join(sorted(schema))}")
    for key, check in schema.items():
        if key not in present:
            raise ExperimentError(f"{key} is missing from the config")
        problem = check(present[key])
        if problem is not None:
            raise ExperimentError(f"{key}={_show(present[key])} is invalid: expected {problem}")
    if values["lr_schedule"] != "constant" and values["reduce_lr_patience"] is not None:
        raise ExperimentError(
            f"lr_schedule={values['lr_schedule']} sets the learning rate at every step and reduce_lr_patience="
            f"{values['reduce_lr_patience']} halves it on plateaus: choose one (reduce_lr_patience=null)"
        )
    if values["backend"] == "jax" and importlib.util.find_spec("jax") is None:
        raise ExperimentError("backend=jax needs JAX: pip install -e '.[jax]'")
    if values["data"]["allow_fallback"] and values["data"]["loader"] != MNIST_LOADER:
        raise ExperimentError(
            f"data.allow_fallback=true is only possible with data=mnist (data.loader={MNIST_LOADER}; "
            "the fallback is a sample of MNIST digits)"
        )


def flatten(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Every leaf of the config under a dotted key, e.g. {'optimizer.lr': 0.001, 'model.hidden_units': [512]}."""
    return dict(_leaves(plain(cfg)))


def direction(metric: str) -> str:
    """'maximize' or 'minimize' for an optimisable metric."""
    return OPTIMIZED_METRICS[metric]


def objectives(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """The optimised metrics, first the one that picks the best run (and a search's champion)."""
    value = cfg["optimized_metric"]
    return [value] if isinstance(value, str) else [str(v) for v in value]


def monitored_metric(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The metric early stopping and learning-rate reduction watch: the first objective that changes during
    training, else val_loss."""
    return next((metric for metric in objectives(cfg) if metric in EPOCH_METRICS), "val_loss")


def plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The job's config as plain, resolved Python values, without Hydra's own `hydra` node."""
    if not isinstance(cfg, DictConfig):
        return {key: value for key, value in cfg.items() if key != "hydra"}
    values = {}
    for key in cfg:
        if key == "hydra":
            continue  # holds values (job number, output dir) that only exist inside a job
        try:
            node = cfg[key]
        except MissingMandatoryValue:
            raise ExperimentError(f"{key} is required: set it with {key}=<value>") from None
        values[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    return values


def _prefixed(section: str, checks: dict[str, Check]) -> dict[str, Check]:
    return {f"{section}.{key}": check for key, check in checks.items()}


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if prefix == "" and key == "hydra":
            continue
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)
