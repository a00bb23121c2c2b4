"""An Optuna search as configured under hydra.sweeper: settings checked up front, the space sampled as
Hydra overrides, samplers, pruners and storages made by name, a lock on a storage. No search loop here."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from mnist_exp.errors import ExperimentError

SAMPLERS = ("tpe", "random", "grid", "nsgaii")
PRUNERS = ("median", "hyperband", "threshold", "none")
PARAM_TYPES = ("categorical", "float", "int", "layers")
PARAM_KEYS = {  # the settings of each type of parameter; any other key is a typing mistake (a `wehn:`)
    "categorical": ("type", "choices", "when"),
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "layers": ("type", "min_layers", "max_layers", "low", "high", "log", "when"),
}
SQLITE_LOCK_TIMEOUT_S = 60
MAX_STUDY_NAME_LENGTH = 255  # a file name's limit
STUDY_FILE = "optuna.db"  # the study storage under runs_dir when hydra.sweeper.storage is null
SPACE_ATTR = "mnist_exp.search_space"  # the study's user attribute holding the space it was created with


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
        values = _as_list(wanted)
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


def applies(spec: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    """Whether a parameter is part of a point whose earlier parameters took the values `chosen`: true unless
    its `when` names a value they did not take."""
    return all(chosen.get(parameter) in _as_list(wanted) for parameter, wanted in (spec.get("when") or {}).items())


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


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


def suggest_overrides(trial, space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sample one point of the space from an Optuna trial, as Hydra command-line overrides."""
    overrides, chosen = [], {}
    for name, spec in space.items():
        if not applies(spec, chosen):
            continue  # a parameter of the model (or optimizer) this point did not choose
        kind = spec["type"]
        if kind == "categorical":
            value = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "float":
            value = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False),
                                        step=spec.get("step"))
        elif kind == "int":
            value = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False),
                                      step=spec.get("step", 1))
        else:
            layers = trial.suggest_int(f"{name}.layers", spec.get("min_layers", 1), spec.get("max_layers", 1))
            value = [
                trial.suggest_int(f"{name}.width_{i}", int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
                for i in range(1, layers + 1)
            ]
        chosen[name] = value
        overrides.append(f"{name}={format_value(value)}")
    return overrides


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def make_sampler(spec: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]):
    import optuna

    name = spec.get("name", "tpe")
    seed = spec.get("seed")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("n_startup_trials", 10))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsgaii":  # for several objectives (TPE takes them too)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.get("population_size", 50))
    if name == "grid":
        if any(p["type"] != "categorical" or p.get("when") for p in space.values()):
            raise ExperimentError("hydra.sweeper.sampler.name=grid needs a search space of categorical parameters "
                                  "only, none of them conditional (when)")
        return _grid_sampler_class()({k: list(p["choices"]) for k, p in space.items()}, seed=seed)
    raise ExperimentError(f"hydra.sweeper.sampler.name={name!r} is invalid: expected one of {', '.join(SAMPLERS)}")


def _grid_sampler_class():
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """Optuna's grid, without the study.stop() its after_trial calls once the grid is covered: that only
        works inside study.optimize(), and this project's ask-and-tell loop checks is_exhausted() itself."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridSampler


def make_pruner(spec: Mapping[str, Any]):
    import optuna

    name = spec.get("name", "median")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.get("n_startup_trials", 5), n_warmup_steps=spec.get("n_warmup_steps", 1)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.get("min_resource", 1), max_resource=spec.get("max_resource", "auto"),
            reduction_factor=spec.get("reduction_factor", 3),
        )
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.get("lower"), upper=spec.get("upper"))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ExperimentError(f"hydra.sweeper.pruner.name={name!r} is invalid: expected one of {', '.join(PRUNERS)}")


def storage_url(configured: str | None, cfg: Mapping[str, Any]) -> str:
    """The study storage of a search: `configured` (hydra.sweeper.storage), else SQLite at <runs_dir>/optuna.db;
    a password in it moved to the variable its driver reads (credentials.take_password)."""
    from mnist_exp.config import runs_dir
    from mnist_exp.credentials import take_password

    # A password written into a config file (one on the command line was taken before Hydra saw it).
    return take_password(configured or f"sqlite:///{runs_dir(cfg) / STUDY_FILE}", "hydra.sweeper.storage")


def default_storage_url() -> str:
    """The study storage a search with the default config uses: what the dashboard opens unless told otherwise."""
    from omegaconf import OmegaConf

    from mnist_exp.config import PROJECT_ROOT

    conf = PROJECT_ROOT / "conf"
    runs_dir = OmegaConf.load(conf / "config.yaml").runs_dir
    configured = OmegaConf.load(conf / "hydra" / "sweeper" / "mnist_optuna.yaml").storage
    return storage_url(configured, {"runs_dir": runs_dir})


def make_storage(url: str):
    """Optuna's storage at `url`, created if new; one ExperimentError line when it cannot be used."""
    import optuna

    from mnist_exp.credentials import connection_url
    from mnist_exp.errors import root_cause
    from mnist_exp.store import sqlite_store_lock

    # Parallel workers write to one SQLite file: wait for its lock rather than fail at once.
    sqlite = url.startswith("sqlite:")
    options = {"engine_kwargs": {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}} if sqlite else {}
    try:
        # Two searches starting at once on a new file would both create its tables (and collide).
        with sqlite_store_lock(url):
            return optuna.storages.RDBStorage(connection_url(url), **options)
    except Exception as error:  # SQLAlchemy and driver errors: an unreachable server, a file of something else
        raise ExperimentError(f"cannot use the Optuna storage {url}: {root_cause(error)}") from None


@contextlib.contextmanager
def storage_lock(url: str, name: str) -> Iterator[None]:
    """Hold the lock `name` on the study storage at `url` while the block runs: searches that start at once on
    one study (several workers) make its parent run, baseline and space once. SQLite: a lock file beside the
    database; PostgreSQL: an advisory lock, which the server releases if this process dies. Other databases:
    no lock (two workers starting at the same moment may then both do it)."""
    from urllib.parse import urlparse

    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        from mnist_exp.store import sqlite_store_lock

        with sqlite_store_lock(url):
            yield
        return
    if scheme != "postgresql":
        yield
        return
    import sqlalchemy

    from mnist_exp.credentials import connection_url

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    # Autocommit: a session left "idle in transaction" may be ended by the server, and the lock with it.
    engine = sqlalchemy.create_engine(connection_url(url), poolclass=sqlalchemy.pool.NullPool,
                                      isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()
