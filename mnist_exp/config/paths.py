"""Where a run's files are: the project root, the runs folder a config names (and the one the shipped defaults
name), the tracking store it names, and the database file of a SQLite URL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mnist_exp.system.credentials import take_password

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SQLITE_PREFIX = "sqlite:///"
STORE_FILE = "mlflow.db"  # the local store's file in runs_dir


def runs_dir(cfg: Mapping[str, Any]) -> Path:
    """The folder every run writes into; a relative `runs_dir` is taken from the project root."""
    path = Path(cfg["runs_dir"]).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def tracking_uri(cfg: Mapping[str, Any]) -> str:
    """The configured URI, or SQLite at <runs_dir>/mlflow.db. A password written into a config file (one on the
    command line was taken before Hydra saw it) moves to the environment (system.credentials.take_password)."""
    uri = cfg["mlflow"]["tracking_uri"]
    if not uri:
        return f"{SQLITE_PREFIX}{runs_dir(cfg) / STORE_FILE}"
    return take_password(uri, "mlflow.tracking_uri")


def default_runs_dir() -> str:
    """`runs_dir` as conf/config.yaml states it: where a run with the default config writes."""
    from omegaconf import OmegaConf

    return OmegaConf.load(PROJECT_ROOT / "conf" / "config.yaml").runs_dir


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (sqlite:///relative.db, sqlite:////absolute.db); None for another one."""
    return Path(url.removeprefix(SQLITE_PREFIX)) if url.startswith(SQLITE_PREFIX) else None
