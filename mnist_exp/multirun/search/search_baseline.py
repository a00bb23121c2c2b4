"""A search's baseline trial: the configuration the command composes without the space's suggestions (the
defaults plus the user's overrides), run first, so that the search's gain over it is one number.

Enqueued as an Optuna fixed-params trial, which the next `ask()` takes whatever the sampler; the trial keeps
the user attribute BASELINE_ATTR. A study that already holds it (same params) is not given it again, unless
that trial was only stopped by Ctrl-C, SIGTERM or its process dying.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mnist_exp.multirun.job_context import INTERRUPTED_REASON
from mnist_exp.multirun.search.search_space import applies, format_value, storage_lock
from mnist_exp.multirun.search.trial_reaper import DIED_REASON

BASELINE_ATTR = "mnist_exp.baseline"  # True on the baseline trial


def baseline_params(config: Any, space: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The composed `config` as Optuna params of `space`, or (None, why it is not a point of the space).
    A key that names a config group (`optimizer`) takes the group's choice, others the config's value."""
    from omegaconf import OmegaConf

    choices = config.hydra.runtime.choices
    params: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for name, spec in space.items():
        if not applies(spec, chosen):
            continue  # a parameter of a model (or optimizer) the config did not choose
        value = choices[name] if name in choices else OmegaConf.select(config, name)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        chosen[name] = value
        problem = _outside(spec, value)
        if problem is not None:
            return None, f"{name}={format_value(value)} is {problem}"
        if spec["type"] == "layers":
            params[f"{name}.layers"] = len(value)
            params.update({f"{name}.width_{i}": width for i, width in enumerate(value, start=1)})
        else:
            params[name] = value
    return params, None


def _outside(spec: Mapping[str, Any], value: Any) -> str | None:
    """Why `value` is not a point of the parameter `spec`, or None."""
    kind = spec["type"]
    if kind == "categorical":
        return None if value in list(spec["choices"]) else "not one of its choices"
    low, high = spec["low"], spec["high"]
    numbers = value if kind == "layers" else [value]
    if not isinstance(numbers, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        return "not a number" if kind != "layers" else "not a list of layer widths"
    if kind == "layers" and not spec.get("min_layers", 1) <= len(numbers) <= spec.get("max_layers", 1):
        return f"not {spec.get('min_layers', 1)} to {spec.get('max_layers', 1)} layers"
    if kind in ("int", "layers") and not all(float(v).is_integer() for v in numbers):
        return "not an integer"
    if not all(low <= v <= high for v in numbers):
        return f"outside [{low}, {high}]"
    return None


def enqueue_baseline(study, storage: str, params: Mapping[str, Any], n_trials: int) -> bool:
    """Put the baseline first in the study's queue unless it holds it already or has nothing left to run;
    whether it was enqueued now. Workers starting at once on one study enqueue it once (a storage lock)."""
    with storage_lock(storage, f"{study.study_name} baseline"):
        trials = study.get_trials(deepcopy=False)
        if sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) >= n_trials:
            return False
        if any(_holds(trial, params) for trial in trials):
            return False
        study.enqueue_trial(dict(params), user_attrs={BASELINE_ATTR: True})
        return True


def _holds(trial, params: Mapping[str, Any]) -> bool:
    """Whether `trial` is the baseline already: the enqueued one, or one with its params, that did not just
    stop because the search was stopped (those run again)."""
    if not (trial.user_attrs.get(BASELINE_ATTR) or trial.params == dict(params)):
        return False
    return trial.state.name != "FAIL" or trial.user_attrs.get("fail_reason") not in (INTERRUPTED_REASON, DIED_REASON)
