"""Models in MLflow: a run's Keras model logged with its signature, loaded back, and registered as champion."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import version
from typing import Any

from mnist_exp.system.errors import ExperimentError, first_line
from mnist_exp.tracking.run_tags import FAILURE_TAG, SWEEP_TAG
from mnist_exp.tracking.store import Store, connect, open_store, sqlite_store_lock

log = logging.getLogger(__name__)
CHAMPION_ALIAS = "champion"
MODEL_NAME = "model"  # the name of the one model each run logs
PIXELS = 28 * 28


def log_keras_model(run_id: str, model: Any, dataset: Any) -> str:
    """Log `model` into run `run_id` with a signature and an input example; returns the model's URI."""
    import keras
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from mnist_exp.system.workarounds import (
        keras_input_example_folder_created,
        requirements_scan_skipped,
        serving_example_check_skipped,
    )

    backend = keras.backend.backend()
    # Written out rather than inferred: inferring runs model.predict, whose first call costs a tracing.
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, dataset.x_test.shape[1]), "pixels")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(dataset.class_names)), "probabilities")]),
    )
    # mlflow.keras logs into the active run; record_run sets the final status afterwards.
    with mlflow.start_run(run_id=run_id), keras_input_example_folder_created(), requirements_scan_skipped(), \
            serving_example_check_skipped():
        # Explicit requirements: inferring them re-imports the model in a subprocess (seconds).
        info = mlflow.keras.log_model(
            model, name=MODEL_NAME, signature=signature, input_example=dataset.x_test[:2],
            pip_requirements=[f"keras=={keras.__version__}", f"{backend}=={version(backend)}"],
        )
    return info.model_uri


def load_logged_model(uri: str, run_id: str | None = None, model_uri: str | None = None) -> tuple[Any, dict[str, str]]:
    """(Keras model, the params of the run that trained it) for a run's model or a models:/ URI."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = open_store(uri)
    what = model_uri or f"the model of run {run_id}"
    try:
        if model_uri is None:
            run = client.get_run(run_id)
            models = logged_models(client, run.info.experiment_id, run_id)
            if not models:
                raise ExperimentError(_why_no_model(run))
            model_uri = models[0].model_uri
        else:
            run = client.get_run(_model_run_id(client, model_uri))
        unfinished = [m for m in logged_models(client, run.info.experiment_id, run.info.run_id)
                      if str(m.status) != "READY"]
        if unfinished:
            raise ExperimentError(f"{what} was never saved whole (status {unfinished[0].status}: its run ended "
                                  "while saving it); train it again or choose another run")
        flavors = mlflow.models.get_model_info(model_uri).flavors
        if "keras" not in flavors:
            raise ExperimentError(f"{what} is not a Keras model (its flavors: {', '.join(sorted(flavors))})")
        if flavors["keras"].get("save_exported_model"):
            # A TensorFlow SavedModel is a graph of ops whoever saved it chose (file reads and writes among them).
            raise ExperimentError(f"{what} is an exported TensorFlow SavedModel; predict loads only models in "
                                  "Keras' own format, as runs save them")
        # What a store holds is data: Keras' safe mode refuses to deserialize Python code (Lambda layers).
        model = mlflow.keras.load_model(model_uri, load_model_kwargs={"safe_mode": True})
    except MlflowException as error:
        raise ExperimentError(f"cannot load {what}: {first_line(error.message)}") from None
    except ExperimentError:
        raise
    except Exception as error:  # a damaged or truncated model file: Keras, zip and h5 errors alike
        raise ExperimentError(f"cannot load {what}: {type(error).__name__}: {first_line(str(error))}") from None
    inputs = getattr(model, "input_shape", None)
    if not (isinstance(inputs, tuple) and inputs[-1:] == (PIXELS,)):
        raise ExperimentError(f"{what} takes input of shape {inputs}, not {PIXELS} pixels (28x28, flattened)")
    return model, dict(run.data.params)


def _why_no_model(run) -> str:
    """Why a run logged no model, from what the run says of itself."""
    run_id, status, tags = run.info.run_id, run.info.status, run.data.tags
    if tags.get(SWEEP_TAG) == "true":
        best = tags.get("best_child_run_id")
        return (f"run {run_id} is a sweep's parent run, which logs no model; predict with one of its runs"
                + (f", e.g. its best: --run {best}" if best else ""))
    if run.data.params.get("mlflow.log_model") == "false":
        return f"run {run_id} has no logged model: it was run with mlflow.log_model=false"
    if status in ("KILLED", "FAILED"):
        why = tags.get(FAILURE_TAG)
        return f"run {run_id} was {status} before its model was saved" + (f" ({first_line(why)})" if why else "")
    if status in ("RUNNING", "SCHEDULED"):
        return f"run {run_id} is {status}: its model is saved when it finishes"
    return f"run {run_id} has no logged model (was it run with mlflow.log_model=false?)"


def _model_run_id(client, model_uri: str) -> str:
    """The run behind runs:/RUN_ID/PATH, models:/NAME@ALIAS, models:/NAME/VERSION or models:/MODEL_ID."""
    expected = "expected runs:/RUN_ID/model, models:/NAME@ALIAS, models:/NAME/VERSION or models:/ID"
    if model_uri.startswith("runs:/"):
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        if not run_id:
            raise ExperimentError(f"--model {model_uri}: {expected}")
        return run_id
    if not model_uri.startswith("models:/"):
        raise ExperimentError(f"--model {model_uri}: {expected}")
    reference = model_uri.removeprefix("models:/")
    if "@" in reference:
        name, alias = reference.split("@", 1)
        return client.get_model_version_by_alias(name, alias).run_id
    if "/" in reference:
        name, model_version = reference.split("/", 1)
        return client.get_model_version(name, model_version).run_id
    return client.get_logged_model(reference).source_run_id


def register_champion(cfg: Mapping[str, Any], run_id: str, name: str | None = None,
                      store: Store | None = None) -> str | None:
    """Register `run_id`'s model under `name` (default: mlflow.registered_model) with the alias champion, in
    `store` (default: the one `cfg` names); returns 'NAME/VERSION'. None, registering nothing, when
    mlflow.registered_model is null."""
    if not cfg["mlflow"]["registered_model"]:
        return None
    name = name or cfg["mlflow"]["registered_model"]
    store = store or connect(cfg)
    models = logged_models(store.client, store.experiment_id, run_id)
    if not models:
        log.warning("not registering %s: run %s logged no model (mlflow.log_model=false)", name, run_id)
        return None
    from mlflow.exceptions import MlflowException

    client = store.client
    with sqlite_store_lock(store.uri):
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Models trained by mnist-exp; @champion: a search's best")
    model_version = client.create_model_version(
        name, models[0].model_uri, run_id=run_id, tags={"mnist_exp.source": "search"}, model_id=models[0].model_id
    )
    client.set_registered_model_alias(name, CHAMPION_ALIAS, model_version.version)
    return f"{name}/{model_version.version}"


def fail_unfinished_models(client, experiment_id: str, run_id: str) -> None:
    """The models `run_id` began to log and never finished (its process died while saving them): FAILED."""
    for model in logged_models(client, experiment_id, run_id):
        if str(model.status) == "PENDING":
            client.finalize_logged_model(model.model_id, "FAILED")


def logged_models(client, experiment_id: str, run_id: str) -> list:
    """The models a run logged (mnist-exp logs one: `model`)."""
    return client.search_logged_models(experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'")
