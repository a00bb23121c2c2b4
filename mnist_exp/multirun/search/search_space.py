"""An Optuna search as configured under hydra.sweeper: the space sampled as Hydra overrides, samplers, pruners
and storages made by name, a lock on a storage (its checks: search_checks). No search loop here."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mnist_exp.system.errors import ExperimentError

SAMPLERS = ("tpe", "random", "grid", "nsgaii")
PRUNERS = ("median", "hyperband", "threshold", "none")
SQLITE_LOCK_TIMEOUT_S = 60
STUDY_FILE = "optuna.db"  # the study storage under runs_dir when hydra.sweeper.storage is null


def applies(spec: Mapping[str, Any], chosen: Mapping[str, Any]) -> bool:
    """Whether a parameter is part of a point whose earlier parameters took the values `chosen`: true unless
    its `when` names a value they did not take."""
    return all(chosen.get(parameter) in as_list(wanted) for parameter, wanted in (spec.get("when") or {}).items())


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


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


def storage_url(configured: str | None, runs_dir: Path) -> str:
    """The study storage of a search: `configured` (hydra.sweeper.storage), else SQLite at <runs_dir>/optuna.db;
    a password in it moved to the variable its driver reads (credentials.take_password)."""
    from mnist_exp.system.credentials import take_password

    # A password written into a config file (one on the command line was taken before Hydra saw it).
    return take_password(configured or f"sqlite:///{runs_dir / STUDY_FILE}", "hydra.sweeper.storage")


def default_storage_url() -> str:
    """The study storage a search with the default config uses: what the dashboard opens unless told otherwise."""
    from omegaconf import OmegaConf

    from mnist_exp.config.paths import PROJECT_ROOT, default_runs_dir, runs_dir

    configured = OmegaConf.load(PROJECT_ROOT / "conf" / "hydra" / "sweeper" / "mnist_optuna.yaml").storage
    return storage_url(configured, runs_dir({"runs_dir": default_runs_dir()}))


def make_storage(url: str):
    """Optuna's storage at `url`, created if new; one ExperimentError line when it cannot be used."""
    import optuna

    from mnist_exp.system.credentials import connection_url
    from mnist_exp.system.errors import root_cause
    from mnist_exp.tracking.store import sqlite_store_lock

    # Parallel workers write to one SQLite file: wait for its lock rather than fail at once.
    sqlite = url.startswith("sqlite:")
    options = {"engine_kwargs": {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}} if sqlite else {}
    try:
        # Two searches starting at once on a new file would both create its tables (and collide).
        with sqlite_store_lock(url):
            return optuna.storages.RDBStorage(connection_url(url), **options)
    except Exception as error:  # SQLAlchemy and driver errors: an unreachable server, a file of something else
        raise ExperimentError(f"cannot use the Optuna storage {url}: {root_cause(error)}") from None


def locks_storage(url: str) -> bool:
    """Whether storage_lock holds a real lock on this storage (and the lock ends with a process that dies)."""
    from urllib.parse import urlparse

    return urlparse(url).scheme.split("+")[0] in ("sqlite", "postgresql")


@contextlib.contextmanager
def storage_lock(url: str, name: str) -> Iterator[None]:
    """Hold the lock `name` on the study storage at `url` while the block runs: searches that start at once on
    one study (several workers) make its parent run, baseline and space once. SQLite: a lock file beside the
    database; PostgreSQL: an advisory lock, which the server releases if this process dies. Other databases:
    no lock (two workers starting at the same moment may then both do it)."""
    from urllib.parse import urlparse

    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        from mnist_exp.tracking.store import sqlite_store_lock

        with sqlite_store_lock(url):
            yield
        return
    if scheme != "postgresql":
        yield
        return
    import sqlalchemy

    from mnist_exp.system.credentials import connection_url

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
