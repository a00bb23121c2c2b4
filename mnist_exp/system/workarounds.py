"""Every place mnist-exp reaches into another library's internals or around one of its bugs.

Each entry names the upstream issue or the private name, checks that the thing it relies on is
still there (else it falls back, or fails with one clear line), and has a test in
tests/test_workarounds.py. Everything else in the project uses public APIs only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mnist_exp.system.errors import first_line

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def keras_input_example_folder_created() -> Iterator[None]:
    """mlflow.keras writes the input example before it creates the model folder and fails with
    FileNotFoundError: https://github.com/mlflow/mlflow/issues/16183 (seen with mlflow 3.1-3.17).
    Creates the folder first. When the private `mlflow.keras.save._save_example` is gone (a release that
    restructured the module, likely fixing the bug with it), nothing is patched."""
    import mlflow.keras.save as keras_save

    original = getattr(keras_save, "_save_example", None)
    if original is None:
        log.debug("mlflow.keras.save._save_example is gone; saving without the mlflow#16183 workaround")
        yield
        return

    def save_example(mlflow_model, input_example, path, *args, **kwargs):
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


# The modules that call MLflow's requirements check while a model is saved: saving it, then loading it back to
# validate the input example.
REQUIREMENTS_CHECKERS = ("mlflow.utils.environment", "mlflow.pyfunc")


@contextlib.contextmanager
def requirements_scan_skipped() -> Iterator[None]:
    """Saving a model with explicit pip_requirements, MLflow checks them against the environment
    (https://github.com/mlflow/mlflow/pull/10843, mlflow 2.10-3.17), and again when it loads the model back to
    validate the input example: to do it, it maps every installed package's files
    (importlib_metadata.packages_distributions), over a second after the last epoch. Ours are the installed
    versions themselves and cannot mismatch, so the check (a warning only) is skipped while the model is
    saved. A module without the private name `warn_dependency_requirement_mismatches` is left alone."""
    import importlib

    patched = []
    for name in REQUIREMENTS_CHECKERS:
        module = importlib.import_module(name)
        original = getattr(module, "warn_dependency_requirement_mismatches", None)
        if original is None:
            log.debug("%s.warn_dependency_requirement_mismatches is gone; nothing to skip there", name)
            continue
        module.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None
        patched.append((module, original))
    try:
        yield
    finally:
        for module, original in patched:
            module.warn_dependency_requirement_mismatches = original


# The names under which MLflow's model logging calls its check of the input example.
SERVING_EXAMPLE_CHECKS = ("_validate_serving_input", "validate_serving_input")


@contextlib.contextmanager
def serving_example_check_skipped() -> Iterator[None]:
    """Logging a model with an input example, MLflow loads the saved model back and predicts on the example
    (https://github.com/mlflow/mlflow/pull/12625, since mlflow 2.16): a second copy of the model and a traced
    predict function after the last epoch of every run, for a warning at most if it fails. Our example is
    two test images under a signature written out from the same arrays, and the tests serve logged models
    for real, so the check is skipped while the model is logged. MLflow calls it as
    `mlflow.models.utils.validate_serving_input`, since mlflow#23376 as `_validate_serving_input`: whichever
    of the two the module has is replaced. A module with neither is left alone and the check runs, quietly: its
    model.predict would print a progress bar after the run's epoch lines, and warn that it was handed a list
    where Keras expects the named input."""
    import mlflow.models.utils as model_utils

    names = [name for name in SERVING_EXAMPLE_CHECKS if hasattr(model_utils, name)]
    if not names:
        log.debug("mlflow.models.utils has no %s; the serving example is checked", " or ".join(SERVING_EXAMPLE_CHECKS))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match", category=UserWarning)
            yield
        return
    originals = {name: getattr(model_utils, name) for name in names}
    for name in names:
        setattr(model_utils, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(model_utils, name, original)


def dataset_input_entity(dataset: Any) -> Any | None:
    """The entity MlflowClient.log_inputs takes, for an `mlflow.data` dataset.

    MLflow converts its datasets with the private `Dataset._to_mlflow_entity()` (what `mlflow.log_input`
    calls); the client API has no public converter, and `mlflow.log_input` needs an active fluent run,
    which would end (FINISHED) a run that is still training. None, with a warning, when the name is gone.
    """
    convert = getattr(dataset, "_to_mlflow_entity", None)
    if convert is None:
        log.warning("not logging dataset inputs: this MLflow has no Dataset._to_mlflow_entity")
        return None
    return convert()


def retry_cpython_ast_race(call: Callable[[], T]) -> T:
    """`call()`, once more if CPython failed an import with "SystemError: AST constructor recursion depth
    mismatch": two threads building ASTs at once (https://github.com/python/cpython/issues/106905; here
    MLflow's import in a thread while TensorFlow's autograph parses source). Fixed upstream from CPython 3.13."""
    try:
        return call()
    except SystemError as error:
        if sys.version_info >= (3, 13) or "recursion depth mismatch" not in str(error):
            raise
        log.debug("trying again after %s", error)
        return call()


# How a SQL store refuses a row whose primary key exists: PostgreSQL, SQLite, MySQL.
DUPLICATE_KEY_ERRORS = ("duplicate key value", "UNIQUE constraint failed", "Duplicate entry")


def retry_dataset_insert_race(call: Callable[[], T]) -> T:
    """`call()` (MlflowClient.log_inputs), once more if the store refused a dataset another run inserted at the
    same moment. MLflow's SQL store looks up the experiment's datasets, then inserts those it did not find
    (`SqlAlchemyStore._log_inputs_impl`, mlflow 3.17; no lock between the two): parallel trials logging the same
    new dataset both insert it, and the second fails on its primary key (`dataset_pk`), through a tracking
    server as BAD_REQUEST. The second attempt's lookup finds the row. SQLite stores are also serialised by
    mnist-exp's own lock (tracking.store.sqlite_store_lock); this covers servers and PostgreSQL."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as error:
        message = str(error)
        if "dataset" not in message or not any(refusal in message for refusal in DUPLICATE_KEY_ERRORS):
            raise
        log.debug("logging the dataset again after %s", first_line(message))
        return call()


def hydra_basic_sweeper_class():
    """Hydra's default grid sweeper, which mnist-exp's grid sweeper extends. Hydra ships it in a private
    module (`hydra._internal.core_plugins.basic_sweeper`; its own `hydra/sweeper/basic` config names that
    path); tested with hydra-core 1.3. One line instead of an ImportError when it moves."""
    from mnist_exp.system.errors import ExperimentError

    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    except ImportError:
        raise ExperimentError(
            "this hydra-core has no hydra._internal.core_plugins.basic_sweeper; install hydra-core>=1.3.2,<1.4"
        ) from None
    return BasicSweeper


def ray_init_settings(launcher: Any) -> dict | None:
    """The `ray.init` arguments of hydra-ray-launcher's launcher, or None for other launchers.

    The plugin keeps its config in the undocumented attribute `ray_cfg` (hydra-ray-launcher 1.2) and
    calls `ray.init` inside `launch`, which is not safe from two of the search's slot threads at once;
    the sweeper starts Ray itself, before the threads, with these settings."""
    from omegaconf import OmegaConf

    settings = getattr(launcher, "ray_cfg", None)
    if settings is None or "init" not in settings:
        return None
    init = settings.init
    return OmegaConf.to_container(init, resolve=True) if OmegaConf.is_config(init) else dict(init or {})


MLFLOW_DATABASE_ATTEMPTS = 4  # sleeps of 0.1, 0.3, 0.7 and 1.5 s: a database still starting up gets 2.6 s


def bounded_mlflow_database_retries() -> None:
    """MLflow retries creating its SQLAlchemy engine 10 times with doubling sleeps, about 100 s of silence,
    also for what no retry mends (a wrong password, a missing database): added by
    https://github.com/mlflow/mlflow/pull/3784 (for https://github.com/mlflow/mlflow/issues/1749), with no
    setting (mlflow 3.17). Lowers the private `mlflow.store.db.utils.MAX_RETRY_COUNT`; when it is gone or
    no longer a count, nothing is changed."""
    import mlflow.store.db.utils as db_utils

    attempts = getattr(db_utils, "MAX_RETRY_COUNT", None)
    if not isinstance(attempts, int) or isinstance(attempts, bool):
        log.debug("mlflow.store.db.utils.MAX_RETRY_COUNT is gone; MLflow's own database retries apply")
        return
    db_utils.MAX_RETRY_COUNT = min(attempts, MLFLOW_DATABASE_ATTEMPTS)


def replace_table(client, run_id: str, columns: dict[str, list[Any]], artifact_file: str) -> None:
    """A table in the run, written as `MlflowClient.log_table` writes it, replacing the one already there:
    log_table appends to an existing table, so a resumed sweep's summary would count every earlier job twice
    (mlflow 2.11-3.17 document it so). Writes log_table's file format (pandas' split JSON) and the private tag
    `mlflow.loggedArtifacts` that the UI's table view reads; when that constant is gone, the file is still
    replaced and only the UI's listing is left out."""
    import json
    import tempfile
    from pathlib import Path

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="mnist-exp-table-") as folder:
        path = Path(folder) / artifact_file
        pd.DataFrame(columns).to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path))
    try:
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS
    except ImportError:
        log.debug("mlflow.utils.mlflow_tags.MLFLOW_LOGGED_ARTIFACTS is gone; table %s not listed", artifact_file)
        return
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    if {"path": artifact_file, "type": "table"} not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, {"path": artifact_file, "type": "table"}]))


# TensorFlow releases known to write start-up notices to fd 2 whatever TF_CPP_MIN_LOG_LEVEL says.
NOISY_TENSORFLOW_FROM = (2, 16)


@contextlib.contextmanager
def tensorflow_start_up_notices_discarded() -> Iterator[None]:
    """TensorFlow >= 2.16 writes start-up notices (CUDA probing, "All log messages before absl::InitializeLog()")
    to file descriptor 2 before it honours TF_CPP_MIN_LOG_LEVEL: https://github.com/tensorflow/tensorflow/issues/
    100442 (seen up to 2.21). While it is first imported with that level at 2 or more (mnist_exp.system.
    keras_backend sets 3 unless the user chose), fd 2 goes to /dev/null; an older TensorFlow, an import already
    done, or a level the user lowered to see the notices leaves stderr alone. A failing import still raises."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = tuple(int(part) for part in version("tensorflow").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        release = (0, 0)
    quiet = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") >= "2"
    if "tensorflow" in sys.modules or not quiet or release < NOISY_TENSORFLOW_FROM:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def hydra_raises_errors() -> Iterator[bool]:
    """Hydra prints a job's exception as its own multi-line report unless HYDRA_FULL_ERROR=1, which makes it re-raise
    (https://hydra.cc/docs/tutorials/basic/running_your_app/debugging/): set while the block runs, so the command
    line reports errors as one line each. Yields whether the user had set it (then tracebacks are shown)."""
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield previous == "1"
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
