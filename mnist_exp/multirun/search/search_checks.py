"""The checks of an Optuna search's settings and space, before anything is created: values that cannot work,
parameters that would never be drawn, and a study reused with another space (said setting by setting)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_exp.multirun.search.search_space import as_list, format_value, make_pruner, make_sampler
from mnist_exp.system.errors import ExperimentError

PARAM_TYPES = ("categorical", "float", "int", "layers")
PARAM_KEYS = {  # the settings of each type of parameter; any other key is a typing mistake (a `wehn:`)
    "categorical": ("type", "choices", "when"),
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "layers": ("type", "min_layers", "max_layers", "low", "high", "log", "when"),
}
MAX_STUDY_NAME_LENGTH = 255  # a file name's limit
SPACE_ATTR = "mnist_exp.search_space"  # a stored name, kept: the study attribute holding the space it was made with


def check_settings(sweeper: Mapping[str, Any]) -> None:
    """Raise ExperimentError for sweeper settings that cannot work, before anything is created."""
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExperimentError(f"hydra.sweeper.{key}={value!r} is invalid: expected an integer >= 1")
    if not isinstance(sweeper.get("enqueue_baseline", True), bool):
        raise ExperimentError(
            f"hydra.sweeper.enqueue_baseline={sweeper.get('enqueue_baseline')!r} is invalid: expected true or false"
        )
    threads = sweeper.get("threads_per_job", "auto")
    if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise ExperimentError(f"hydra.sweeper.threads_per_job={threads!r} is invalid: expected auto or an integer >= 0")
    from mnist_exp.config import name_problem

    problem = name_problem(sweeper.get("study_name"), MAX_STUDY_NAME_LENGTH)
    if problem is not None:
        # The name is also the folder of the search's plots under runs_dir/optuna.
        raise ExperimentError(f"hydra.sweeper.study_name={sweeper.get('study_name')!r} is invalid: expected {problem}")
    space = sweeper.get("search_space") or {}
    check_space(space)
    make_sampler(sweeper.get("sampler") or {}, space)
    make_pruner(sweeper.get("pruner") or {})


def check_objectives(sweeper: Mapping[str, Any], objectives: Sequence[str]) -> None:
    """The settings a search's objectives (optimized_metric) rule out."""
    if "val_loss" in objectives and "label_smoothing" in (sweeper.get("search_space") or {}):
        raise ExperimentError(
            "optimized_metric val_loss cannot rank trials of different label_smoothing: their losses are "
            "against differently smoothed targets; optimise val_accuracy, or fix label_smoothing"
        )
    pruner = (sweeper.get("pruner") or {}).get("name", "median")
    if len(objectives) > 1 and pruner != "none":
        raise ExperimentError(
            f"hydra.sweeper.pruner.name={pruner} cannot prune a search of {len(objectives)} objectives (Optuna "
            "prunes single-objective studies only); set hydra.sweeper.pruner.name=none"
        )


def check_space(space: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ExperimentError for a search space that cannot be sampled (unknown type, inverted bounds, ...) or
    holds a parameter that would never be drawn (a condition that can never hold, a misspelt `when`)."""
    if not space:
        raise ExperimentError("hydra.sweeper.search_space is empty; choose hparams_search=optuna or add parameters")
    needs: dict[str, dict[str, list[Any]]] = {}  # per parameter: the values its draw needs of earlier ones
    for name, spec in space.items():
        where = f"hydra.sweeper.search_space.{name}"
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise ExperimentError(f"{where}.type={kind!r} is invalid: expected one of {', '.join(PARAM_TYPES)}")
        unknown = [key for key in spec if key not in PARAM_KEYS[kind]]
        if unknown:
            raise ExperimentError(f"{where}.{unknown[0]} is not a setting of a {kind} parameter: expected "
                                  f"{', '.join(PARAM_KEYS[kind])}")
        needs[name] = _condition_needs(where, name, spec.get("when"), space, needs)
        if kind == "categorical":
            if not spec.get("choices"):
                raise ExperimentError(f"{where}.choices must be a non-empty list")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ExperimentError(f"{where} needs numeric low and high, got low={low!r} high={high!r}")
        if low > high:
            raise ExperimentError(f"{where} has inverted bounds: low={low} > high={high}")
        if spec.get("log") and low <= 0:
            raise ExperimentError(f"{where} is on a log scale, so low must be > 0 (got {low})")
        if spec.get("log") and spec.get("step") not in (None, 1):
            # Optuna refuses it in every trial, each then FAIL.
            raise ExperimentError(f"{where} takes log or step, not both (Optuna samples a log scale without steps)")
        if kind == "layers":
            least, most = spec.get("min_layers", 1), spec.get("max_layers", 1)
            if not (isinstance(least, int) and isinstance(most, int) and 1 <= least <= most):
                raise ExperimentError(
                    f"{where} needs 1 <= min_layers <= max_layers, got min_layers={least} max_layers={most}"
                )
            if low < 1:
                raise ExperimentError(f"{where} layer widths must be >= 1 (got low={low})")


def _condition_needs(where: str, name: str, when: Any, space: Mapping[str, Mapping[str, Any]],
                     needs: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, list[Any]]:
    """What `name` needs of earlier parameters to be drawn: its `when` ({parameter: choice or [choices]}, each
    a categorical parameter listed before it), and what those need in turn. A condition that can never hold
    is refused, naming why: it would silently never draw the parameter."""
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise ExperimentError(f"{where}.when must map earlier parameters to their choices, e.g. {{model: cnn}}")
    names = list(space)
    earlier = names[:names.index(name)]
    found: dict[str, tuple[list[Any], str]] = {}  # parameter -> the values allowed, and who asks for them
    for parameter, wanted in when.items():
        condition = f"{where}.when.{parameter}={format_value(wanted)}"
        spec = space.get(parameter)
        if spec is None:
            raise ExperimentError(f"{condition} can never hold: {parameter} is not a parameter of the search space")
        if parameter == name:
            raise ExperimentError(f"{condition} can never hold: a parameter cannot depend on itself")
        if parameter not in earlier:
            raise ExperimentError(f"{condition} can never hold: {parameter} is drawn after {name}; list it before")
        if spec.get("type") != "categorical":
            raise ExperimentError(f"{condition} is invalid: {parameter} is a {spec.get('type')} parameter, and "
                                  "when takes categorical parameters only")
        choices = list(spec.get("choices") or [])
        values = as_list(wanted)
        missing = [value for value in values if value not in choices]
        if not values:
            raise ExperimentError(f"{condition} can never hold: it names none of the choices of {parameter} "
                                  f"{format_value(choices)}")
        if missing:  # one of several still holds; a typing mistake all the same
            verdict = "is invalid" if len(missing) < len(values) else "can never hold"
            are = "is" if len(missing) == 1 else "are"
            raise ExperimentError(f"{condition} {verdict}: {_one_or_list(missing)} {are} not among the choices of "
                                  f"{parameter} {format_value(choices)}")
        asks = [(parameter, values, "it asks")]
        asks += [(earlier_one, allowed, f"{parameter} is drawn only when")
                 for earlier_one, allowed in needs[parameter].items()]
        for other, allowed, who in asks:
            before = found.get(other)
            both = allowed if before is None else [value for value in before[0] if value in allowed]
            if not both:
                raise ExperimentError(
                    f"{where}.when={_format_when(when)} can never hold: {before[1]} {other}={_one_or_list(before[0])}"
                    f", and {who} {other}={_one_or_list(allowed)}"
                )
            found[other] = (both, before[1] if before is not None else who)
    return {parameter: allowed for parameter, (allowed, _) in found.items()}


def _format_when(when: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{parameter}: {format_value(wanted)}" for parameter, wanted in when.items()) + "}"


def _one_or_list(values: list[Any]) -> str:
    return format_value(values[0] if len(values) == 1 else values)


def check_study_space(study, space: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """A study keeps the space its first search gave it: trials drawn from two spaces do not compare, and Optuna
    itself only fails (mid-trial) when a categorical's choices change. `where` names the study in the error."""
    wanted = json.loads(json.dumps(space, sort_keys=True))
    recorded = study.user_attrs.get(SPACE_ATTR)
    if recorded is None:  # a new study, or one from before spaces were recorded: this search's space is its space
        study.set_user_attr(SPACE_ATTR, wanted)
        return
    differences = _space_differences(recorded, wanted)
    if differences:
        raise ExperimentError(
            f"{where} was created with another search space (the study's -> this search's: {'; '.join(differences)});"
            " search it with its own space, or choose another hydra.sweeper.study_name"
        )


def _space_differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """Parameter by parameter, how the space `wanted` differs from the `recorded` one: added, removed, another
    type, or each setting changed with its old and new value."""
    differences = []
    for name in sorted({*recorded, *wanted}):
        old, new = recorded.get(name), wanted.get(name)
        if old == new:
            continue
        if old is None:
            differences.append(f"{name}: added {_describe(new)}")
        elif new is None:
            differences.append(f"{name}: removed (was {_describe(old)})")
        elif not (isinstance(old, Mapping) and isinstance(new, Mapping)) or old.get("type") != new.get("type"):
            differences.append(f"{name}: {_describe(old)} -> {_describe(new)}")
        else:
            changes = [f"{key} {_describe(old.get(key))} -> {_describe(new.get(key))}"
                       for key in _ordered({*old, *new}, old.get("type")) if old.get(key) != new.get(key)]
            differences.append(f"{name}: {', '.join(changes)}")
    return differences


def _describe(value: Any) -> str:
    """A parameter, a setting or a condition as its YAML would read: {type: float, low: 0.0, high: 0.5}."""
    if value is None:
        return "unset"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_describe(value[key])}" for key in _ordered(value, value.get("type"))) + "}"
    return format_value(value)


def _ordered(keys: Any, kind: Any) -> list[str]:
    """Keys in the order a parameter's settings are written (type first), others after them, sorted."""
    order = PARAM_KEYS.get(kind, ("type",)) if isinstance(kind, str) else ("type",)
    return [key for key in order if key in keys] + sorted(key for key in keys if key not in order)


def check_command_line(overrides: Sequence[Any], space: Mapping[str, Mapping[str, Any]],
                       choices: Mapping[str, Any]) -> None:
    """The search's command-line `overrides` (Hydra's parsed ones): no values to sweep (they belong in the
    space), and a key set under a group the search chooses (model.filters while the space chooses model) must
    exist in every option of that group: Hydra applies it to whichever option a trial draws, and fails the
    trials of an option without it."""
    from omegaconf import OmegaConf

    from mnist_exp.config.paths import PROJECT_ROOT

    for override in overrides:
        if override.is_sweep_override():
            raise ExperimentError(
                f"{override.input_line}: put values to search in hydra.sweeper.search_space, not on the command line"
            )
    chosen = {name: spec.get("choices") or [] for name, spec in space.items()
              if spec.get("type") == "categorical" and name in choices}
    for override in overrides:
        group, _, key = override.key_or_group.partition(".")
        for option in chosen.get(group, []) if key else []:
            path = PROJECT_ROOT / "conf" / group / f"{option}.yaml"
            if path.is_file() and OmegaConf.select(OmegaConf.load(path), key, default="<absent>") == "<absent>":
                raise ExperimentError(
                    f"{override.input_line}: the search chooses {group} (hydra.sweeper.search_space.{group}) and "
                    f"{group}={option} has no {key}; give each {group} its values in the space, with when: "
                    f"{{{group}: ...}}"
                )
