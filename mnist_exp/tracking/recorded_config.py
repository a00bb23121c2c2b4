"""A run's recorded config.yaml read as data, never as code or as a say over this machine.

Whoever can write to a store (a shared tracking server) can edit any run's config.yaml. So what `rerun` takes
from it is bounded: the file is read with size, node and alias limits (a YAML alias bomb is one line, not
gigabytes); values are plain (an OmegaConf interpolation such as `${oc.env:...}` would read this machine's
environment into the new run's params); `data.loader` is called only when it is a loader this checkout's own
conf/data/*.yaml names, or one the user trusts on the command line; and the recorded `runs_dir`, `hydra` node,
tracking URI and `data.path` are never used: the store the run was read from and the user's overrides decide.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from mnist_exp.config import paths
from mnist_exp.config.paths import default_runs_dir, sqlite_file
from mnist_exp.system.errors import ExperimentError

# A recorded config is ~2 kB; anything near these limits was not written by a run.
MAX_BYTES = 256 * 1024
MAX_NODES = 20_000
MAX_DEPTH = 32
# Keys whose recorded value is a place on this machine: taken from the store and the command line instead.
MACHINE_KEYS = ("runs_dir", "mlflow.tracking_uri", "data.path")


class _BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader without aliases and with bounded size: config.yaml as runs write it never has an
    alias (OmegaConf.to_yaml of plain values), and aliases are what make a few kB expand to gigabytes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (yaml's signature)
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("it uses a YAML alias (*name), which recorded configs never do")
        self._nodes += 1
        self._depth += 1
        try:
            if self._nodes > MAX_NODES or self._depth > MAX_DEPTH:
                raise yaml.YAMLError(f"it has more than {MAX_NODES} values or is nested deeper than {MAX_DEPTH}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def rerun_command(run_id: str, tracking_uri: str | None = None, data_path: str | None = None) -> str:
    """The command that reruns `run_id` (mnist_exp.rerun). It names the store unless that is the default
    config's (whoever runs it may have another $MLFLOW_TRACKING_URI), and the data's path when the run read
    one: a rerun takes no path from a store."""
    from mnist_exp.system.redaction import mask
    from mnist_exp.tracking.store import default_uri

    store = [] if tracking_uri in (None, default_uri()) else ["--tracking-uri", shlex.quote(mask(tracking_uri))]
    path = [] if not data_path else [f"data.path={shlex.quote(data_path)}"]
    return " ".join(["python -m mnist_exp.rerun", run_id, *store, *path])


def read(path: Path, run_id: str) -> DictConfig:
    """The config recorded in `path` (run `run_id`'s config.yaml), as plain values; one ExperimentError when it
    is too large, not YAML, uses aliases or interpolations, or is not a mapping."""
    check_size(run_id, "config.yaml", path.stat().st_size)
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_BoundedLoader)  # noqa: S506 (safe subclass)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExperimentError(f"run {run_id}'s config.yaml cannot be read: {reason}") from None
    if not isinstance(values, dict):
        raise ExperimentError(f"run {run_id}'s config.yaml is not a mapping of keys to values")
    for key, value in _strings(values):
        if "${" in value:
            raise ExperimentError(f"run {run_id}'s config.yaml has an interpolation at {key}={value!r}: "
                                  "recorded configs hold resolved values only")
    values.pop("hydra", None)
    return OmegaConf.create(values)


def check_size(run_id: str, name: str, size: int | None) -> None:
    """One ExperimentError when a recorded file (`name`, `size` bytes) is larger than a run ever writes."""
    if (size or 0) > MAX_BYTES:
        raise ExperimentError(f"run {run_id}'s {name} is {size} bytes, more than a run records ({MAX_BYTES}); "
                              "it was not written by a run")


def read_overrides(path: Path, run_id: str) -> list[str]:
    """The overrides a run recorded in `path` (overrides.txt), one per line."""
    check_size(run_id, "overrides.txt", path.stat().st_size)
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ExperimentError(f"run {run_id}'s overrides.txt is not text") from None


def take_machine_keys_from(cfg: DictConfig, store_uri: str, chosen: Iterable[str]) -> None:
    """Replace the recorded places on this machine by the store's: `runs_dir` is the folder of a local store
    (else the default config's), the tracking URI the store's, `data.path` the default source (null). Keys in
    `chosen` (the user's overrides, applied after this) are left for the overrides."""
    from mnist_exp.config.paths import STORE_FILE, tracking_uri
    from mnist_exp.tracking.store import default_uri

    chosen = set(chosen)
    if "runs_dir" not in chosen:
        database = sqlite_file(store_uri)
        in_store_folder = database is not None and database.name == STORE_FILE
        cfg.runs_dir = str(database.parent) if in_store_folder and store_uri != default_uri() else default_runs_dir()
    if not chosen & {"mlflow", "mlflow.tracking_uri"} and isinstance(cfg.get("mlflow"), DictConfig):
        cfg.mlflow.tracking_uri = None
        if tracking_uri(cfg) != store_uri:
            cfg.mlflow.tracking_uri = store_uri
    if not chosen & {"data", "data.path"} and isinstance(cfg.get("data"), DictConfig):
        cfg.data.path = None


def recorded_data_path(cfg: DictConfig) -> str | None:
    """The `data.path` a recorded config names, if any (to be given again on the command line)."""
    data = cfg.get("data")
    path = data.get("path") if isinstance(data, DictConfig) else None
    return path if isinstance(path, str) and path else None


def trusted_loaders(extra: Iterable[str] = ()) -> set[str]:
    """The loaders this checkout's conf/data/*.yaml name (the shipped ones and the user's own datasets),
    and `extra` (those the user trusts on the command line)."""
    loaders = set(extra)
    for path in sorted((paths.PROJECT_ROOT / "conf" / "data").glob("*.yaml")):
        loader = OmegaConf.load(path).get("loader")
        if isinstance(loader, str):
            loaders.add(loader)
    return loaders


def check_loader(cfg: DictConfig, run_id: str, trusted: set[str]) -> None:
    """One ExperimentError, before anything is imported, when the config's `data.loader` is not trusted."""
    data = cfg.get("data")
    loader = data.get("loader") if isinstance(data, DictConfig) else None
    if isinstance(loader, str) and loader not in trusted:
        raise ExperimentError(
            f"run {run_id}'s config names data.loader={loader}, which no dataset in conf/data/ names: a rerun "
            f"calls only loaders you trust (if you do: --trust-loader {loader})"
        )


def _strings(values: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _strings(value, f"{prefix}{key}.")
    elif isinstance(values, list):
        for index, value in enumerate(values):
            yield from _strings(value, f"{prefix}{index}.")
    elif isinstance(values, str):
        yield prefix.rstrip("."), values
