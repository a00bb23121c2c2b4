"""The MLflow store: where it is, a client for it, and its failures as one line (store_checks: whether it can be used).

MLflow is imported inside functions only: its import is slow, and `--help` and config errors should not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnist_exp import config
from mnist_exp.config.paths import default_runs_dir, sqlite_file, tracking_uri
from mnist_exp.config.plan import RunPlan
from mnist_exp.system.credentials import connection_url, take_password
from mnist_exp.system.errors import ExperimentError, StoreFailed, first_line, root_cause
from mnist_exp.system.net import CONNECT_TIMEOUT_S
from mnist_exp.system.redaction import mask
from mnist_exp.tracking.store_checks import check_store_uri, server_refusal

# MLflow's retries of a failed HTTP request, unless the user set them: a few seconds in all, where
# MLflow's own defaults (sized for rate-limited hosted servers) spend minutes on every call of a run.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# MLflow 3 keeps an experiment's kind in this tag; this value is model training, not GenAI. Names as its UI reads
# them (mlflow/server/js/build); 3.17's UI still opens the workflow the browser last chose (README: the MLflow UI).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
# How long a reading command (runs, predict, rerun's look-up of a run) waits for each answer of a tracking
# server, unless the user set it: MLflow's default (120 s an attempt) is sized for uploading large models.
# Writers keep MLflow's default (see reads_time_out_soon).
HTTP_TIMEOUT_VARIABLE = "MLFLOW_HTTP_REQUEST_TIMEOUT"
READ_TIMEOUT_S = 10


@dataclass(frozen=True)
class Store:
    """A client on a usable store, and the experiment runs are recorded in."""

    client: Any
    experiment_id: str
    uri: str


def reading_uri() -> str:
    """The store the reading commands (predict, runs) open by default: $MLFLOW_TRACKING_URI, else the store
    a run with the default config writes to."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def default_uri() -> str:
    """The store a run with the default config writes to."""
    return tracking_uri({"runs_dir": default_runs_dir(), "mlflow": {"tracking_uri": None}})


def ui_command(uri: str) -> str:
    """The command (or address) that shows this store in the MLflow UI."""
    if uri.startswith(("http://", "https://")):
        return f"open {mask(uri)}"
    # The `mlflow` of this environment, by full path unless it is the one on PATH (e.g. outside the venv).
    script = Path(sys.executable).parent / "mlflow"
    found = shutil.which("mlflow")
    program = "mlflow" if found and Path(found).resolve() == script.resolve() else str(script)
    return f"{shlex.quote(program)} ui --backend-store-uri {shlex.quote(mask(uri))}"


def store_uri(cfg: RunPlan | Mapping[str, Any]) -> str:
    """The tracking URI of a resolved plan (worked out once), or of a config."""
    return cfg.tracking_uri if isinstance(cfg, RunPlan) else tracking_uri(cfg)


def check_store(cfg: RunPlan | Mapping[str, Any]) -> None:
    """Fail fast, without importing MLflow, when the configured store is plainly unusable for a run."""
    check_store_uri(store_uri(cfg), writing=True)


def connect(cfg: RunPlan | Mapping[str, Any]) -> Store:
    """The configured store and experiment (created when missing), or one ExperimentError saying why not."""
    from mnist_exp.system.workarounds import retry_cpython_ast_race

    return retry_cpython_ast_race(lambda: _connect(cfg))


def _connect(cfg: RunPlan | Mapping[str, Any]) -> Store:
    _quiet_mlflow_logging()
    reads_time_out_soon(False)  # a run uploads its model and artifacts: MLflow's timeout, or the user's
    uri = store_uri(cfg)
    check_store_uri(uri, writing=True)

    import mlflow

    from mnist_exp.system.workarounds import bounded_mlflow_database_retries

    bounded_mlflow_database_retries()
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(connection_url(uri))
    name = (cfg.values if isinstance(cfg, RunPlan) else cfg)["mlflow"]["experiment"]
    try:
        with sqlite_store_lock(uri):
            # The client builds the store at once: on a new file, tables and migrations, which race.
            client = mlflow.MlflowClient(connection_url(uri))
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                experiment_id = _create_experiment(client, name, _artifact_location(name, uri))
            else:
                experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    raise ExperimentError(
                        f"mlflow.experiment={name} was deleted in {uri}; restore it in the UI or choose another name"
                    )
                if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before we set it, or by someone else
                    _mark_model_development(client, experiment_id)
    except MlflowException as error:
        refusal = _tracking_server_refusal(error, uri, f"to use mlflow.experiment={name}")
        raise refusal or ExperimentError(f"cannot use the MLflow store {uri}: {first_line(error.message)}") from None
    except ExperimentError:
        raise
    except Exception as error:  # SQLAlchemy and driver errors for a file that is no MLflow database
        raise ExperimentError(f"cannot use the MLflow store {uri}: {first_line(str(error))}") from None
    return Store(client, experiment_id, uri)


def open_store(uri: str):
    """An MLflow client for an existing store, for reading; or one ExperimentError saying why not."""
    uri = take_password(uri, "--tracking-uri")
    problem = config.tracking_uri_problem(uri)
    if problem is not None:
        raise ExperimentError(f"--tracking-uri {uri} is invalid: expected {problem}")
    _quiet_mlflow_logging()
    reads_time_out_soon(True)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise ExperimentError(f"no MLflow store at {uri}; train a model first, or pass --tracking-uri")
    check_store_uri(uri, writing=False)

    import mlflow

    from mnist_exp.system.workarounds import bounded_mlflow_database_retries

    bounded_mlflow_database_retries()

    mlflow.set_tracking_uri(connection_url(uri))
    client = mlflow.MlflowClient(connection_url(uri))
    if urlparse(uri).scheme in ("http", "https"):
        _check_server_lets_us_read(client, uri)
    return client


def check_store_access(cfg: RunPlan | Mapping[str, Any]) -> None:
    """Before a search creates its study: a tracking server that refuses us (no or wrong credentials) is one
    line now, not after the study exists. Other stores are checked when the parent run connects."""
    uri = store_uri(cfg)
    if urlparse(uri).scheme in ("http", "https"):
        open_store(uri)


def _check_server_lets_us_read(client, uri: str) -> None:
    """A server with authentication refuses a reader without (valid) credentials: one line, asked once here,
    instead of a traceback from whichever call a command makes first. Any other failure of this first read
    (a timeout) is one line too: the command's own reads would wait as long again."""
    from mlflow.exceptions import MlflowException

    try:
        client.search_experiments(max_results=1)
    except MlflowException as error:
        refusal = _tracking_server_refusal(error, uri, "to read its runs")
        if refusal is not None:
            raise refusal from None
        raise StoreFailed(f"the MLflow store {mask(uri)} failed while reading its runs: {root_cause(error)}") from None


_short_timeout_set = False  # by reads_time_out_soon, in this process's environment, where MLflow reads it


def reads_time_out_soon(reading: bool) -> None:
    """MLflow's HTTP timeout for a process that only reads (READ_TIMEOUT_S), or back to MLflow's own before
    it writes; a timeout the user set is left alone. MLflow reads it from the environment at every request."""
    global _short_timeout_set
    if reading and HTTP_TIMEOUT_VARIABLE not in os.environ:
        os.environ[HTTP_TIMEOUT_VARIABLE] = str(READ_TIMEOUT_S)
        _short_timeout_set = True
    elif not reading and _short_timeout_set:
        os.environ.pop(HTTP_TIMEOUT_VARIABLE, None)
        _short_timeout_set = False


@contextlib.contextmanager
def sqlite_store_lock(uri: str) -> Iterator[None]:
    """Serialise writes that race in a shared SQLite store: parallel jobs creating its tables, or
    registering the same dataset or model name, at the same moment collide on unique constraints."""
    if urlparse(uri).scheme != "sqlite":
        yield
        return
    import fcntl

    with open(f"{sqlite_file(uri)}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def names_no_run(error: Exception) -> bool:
    """Whether an MLflow error of get_run says the id names no run (a malformed id is an invalid value),
    not that the store failed."""
    return getattr(error, "error_code", None) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@contextlib.contextmanager
def store_writes(uri: str, doing: str) -> Iterator[None]:
    """Errors of the store's client while `doing` (MLflow, SQLAlchemy, HTTP and file errors alike) as one
    StoreFailed line naming the store and the cause."""
    try:
        yield
    except ExperimentError:
        raise
    except Exception as error:
        refusal = _tracking_server_refusal(error, uri, f"while {doing}")
        if refusal is not None:
            raise StoreFailed(str(refusal)) from None
        database = sqlite_file(uri)
        gone = database is not None and not database.exists()
        raise StoreFailed(
            f"the MLflow store {uri} failed while {doing}: {root_cause(error)}{' (its file is gone)' if gone else ''}"
        ) from None


def _tracking_server_refusal(error: Exception, uri: str, doing: str) -> ExperimentError | None:
    """server_refusal for a 401 or 403 that the tracking server's REST API answered (not one of an artifact
    store the client writes to directly, such as S3's), else None."""
    from mlflow.exceptions import MlflowException, RestException

    if urlparse(uri).scheme not in ("http", "https") or not isinstance(error, MlflowException):
        return None
    # MLflow's words for an answer of its REST API that is no JSON (mlflow/utils/rest_utils.py, verify_rest_response).
    if not (isinstance(error, RestException) or str(error.message).startswith("API request to endpoint")):
        return None
    return server_refusal(uri, error.get_http_status_code(), doing)


def _create_experiment(client, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(
            name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT}
        )
    except MlflowException:
        # Another process created it between our lookup and create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def _mark_model_development(client, experiment_id: str) -> None:
    """Tag an existing experiment as model training; a store that refuses costs the run nothing (a UI hint)."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    except MlflowException as error:
        logging.getLogger(__name__).warning("experiment %s not tagged: %s", experiment_id, first_line(error.message))


def _artifact_location(experiment: str, uri: str) -> str | None:
    """Local stores keep artifacts in an 'artifacts' folder beside the database; servers decide for themselves."""
    database = sqlite_file(uri)
    if database is None:
        return None
    return (database.parent / "artifacts" / experiment).as_uri()


def _quiet_mlflow_logging() -> None:
    # MLflow's telemetry would try the network on every run; this machine may have none.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Reading a model draws download progress bars on stderr, between the command's own lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # libpq waits forever for a server that accepts the connection but never answers.
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(int(CONNECT_TIMEOUT_S)))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Its retry warnings and database errors, with tracebacks, reach the user as one ExperimentError line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
