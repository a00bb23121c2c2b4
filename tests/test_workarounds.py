"""Each workaround of another library's internals: it works with the installed version, and its guard
falls back (or fails in one line) when the private name it relies on is gone."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from mnist_exp.system import workarounds
from mnist_exp.system.errors import ExperimentError


def test_the_keras_input_example_folder_is_created_first(tmp_path, monkeypatch):
    import mlflow.keras.save as keras_save

    written = []
    monkeypatch.setattr(keras_save, "_save_example",
                        lambda model, example, path, *a, **k: written.append((path, (tmp_path / "m").is_dir())))
    original = keras_save._save_example
    with workarounds.keras_input_example_folder_created():
        keras_save._save_example(None, [1], str(tmp_path / "m"))
    assert written == [(str(tmp_path / "m"), True)] and keras_save._save_example is original


def test_without_the_private_save_example_nothing_is_patched(monkeypatch):
    import mlflow.keras.save as keras_save

    monkeypatch.delattr(keras_save, "_save_example")
    with workarounds.keras_input_example_folder_created():
        assert not hasattr(keras_save, "_save_example")


def test_dataset_entities_for_the_client_api_and_the_fallback(caplog):
    import mlflow

    dataset = mlflow.data.from_numpy(np.zeros((2, 3), dtype=np.uint8), targets=np.zeros(2), name="d", digest="abc")
    entity = workarounds.dataset_input_entity(dataset)
    assert (entity.name, entity.digest) == ("d", "abc")

    class Renamed:
        pass

    assert workarounds.dataset_input_entity(Renamed()) is None
    assert "not logging dataset inputs" in caplog.text


def test_the_cpython_ast_race_is_tried_once_more_and_other_errors_pass():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=1, after=2)")
        return "imported"

    assert workarounds.retry_cpython_ast_race(flaky) == "imported" and len(attempts) == 2
    with pytest.raises(SystemError, match="something else"):
        workarounds.retry_cpython_ast_race(lambda: (_ for _ in ()).throw(SystemError("something else")))


def test_hydras_basic_sweeper_is_found_and_its_absence_is_one_line(monkeypatch):
    from hydra.plugins.sweeper import Sweeper

    assert issubclass(workarounds.hydra_basic_sweeper_class(), Sweeper)
    import hydra._internal.core_plugins.basic_sweeper as module

    monkeypatch.delattr(module, "BasicSweeper")
    with pytest.raises(ExperimentError, match="hydra-core>=1.3.2,<1.4"):
        workarounds.hydra_basic_sweeper_class()


def test_the_ray_launchers_settings_are_read_or_none():
    from omegaconf import OmegaConf

    class RayLike:
        ray_cfg = OmegaConf.create({"init": {"address": None, "num_cpus": 2}})

    assert workarounds.ray_init_settings(RayLike()) == {"address": None, "num_cpus": 2}
    assert workarounds.ray_init_settings(object()) is None
    ray_launcher = pytest.importorskip("hydra_plugins.hydra_ray_launcher.ray_launcher")
    launcher = ray_launcher.RayLauncher(ray=OmegaConf.create({"init": {"address": "auto"}, "remote": {}}))
    assert workarounds.ray_init_settings(launcher) == {"address": "auto"}


def test_mlflows_database_retries_are_bounded_and_left_alone_when_gone(monkeypatch):
    import mlflow.store.db.utils as db_utils

    monkeypatch.setattr(db_utils, "MAX_RETRY_COUNT", 10)
    workarounds.bounded_mlflow_database_retries()
    assert db_utils.MAX_RETRY_COUNT == workarounds.MLFLOW_DATABASE_ATTEMPTS
    monkeypatch.delattr(db_utils, "MAX_RETRY_COUNT")
    workarounds.bounded_mlflow_database_retries()
    assert not hasattr(db_utils, "MAX_RETRY_COUNT")


def test_saving_a_model_skips_mlflows_scan_of_every_installed_package(tmp_path, monkeypatch):
    """The scan only checks requirements we take from the installed versions; it cost over a second a run."""
    import importlib_metadata

    scans = []  # MLflow catches what its check raises: count the calls instead
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: scans.append(1) or {})
    monkeypatch.setattr("mlflow.utils.requirements_utils._MODULES_TO_PACKAGES", None)
    assert log_tiny_model(tmp_path).model_id.startswith("m-")
    assert scans == [], "MLflow mapped every installed package while saving the model"
    import mlflow.pyfunc
    import mlflow.utils.environment

    assert mlflow.utils.environment.warn_dependency_requirement_mismatches.__module__ == \
        "mlflow.utils.requirements_utils", "put back afterwards"
    assert mlflow.pyfunc.warn_dependency_requirement_mismatches.__module__ == "mlflow.utils.requirements_utils"


def test_without_mlflows_requirements_check_nothing_is_patched(monkeypatch):
    import mlflow.utils.environment as environment

    monkeypatch.delattr(environment, "warn_dependency_requirement_mismatches")
    with workarounds.requirements_scan_skipped():
        assert not hasattr(environment, "warn_dependency_requirement_mismatches")


def test_a_table_logged_again_replaces_the_first_and_is_listed_once(tmp_path):
    """MlflowClient.log_table appends; a resumed sweep's summary must not list its earlier jobs twice."""
    import json

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("t", artifact_location=str(tmp_path / "a"))).info.run_id
    workarounds.replace_table(client, run_id, {"trial": [0, 1]}, "trials.json")
    workarounds.replace_table(client, run_id, {"trial": [0, 1, 2]}, "trials.json")
    table = json.loads(open(client.download_artifacts(run_id, "trials.json")).read())
    assert table["columns"] == ["trial"] and table["data"] == [[0], [1], [2]]
    listed = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert listed == [{"path": "trials.json", "type": "table"}]


def log_tiny_model(tmp_path):
    """A 4-input MLP logged as the product logs models (logged_models.log_keras_model): its
    LoggedModel in the store."""
    from types import SimpleNamespace

    import mlflow

    from mnist_exp.config.model_keys import MlpSpec
    from mnist_exp.tracking.logged_models import log_keras_model
    from mnist_exp.training.model import build_mlp

    tmp_path.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(client.create_experiment("models", artifact_location=str(tmp_path / "artifacts")))
    model = build_mlp(MlpSpec((2,), "relu", 0.0), input_dim=4, num_classes=3)
    dataset = SimpleNamespace(x_test=np.zeros((2, 4), np.uint8), class_names=["a", "b", "c"])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # log_keras_model logs through MLflow's fluent API, as store.connect sets it up
    try:
        model_uri = log_keras_model(run.info.run_id, model, dataset)
    finally:
        mlflow.set_tracking_uri(previous)
    return client.get_logged_model(model_uri.removeprefix("models:/"))


@pytest.mark.slow  # two models logged, one loaded back and served
def test_a_logged_model_is_not_loaded_back_to_check_its_example_and_still_serves_it(tmp_path, monkeypatch):
    """MLflow's check loaded the model back and predicted on the example after every run."""
    import contextlib

    import mlflow.models.utils as model_utils
    import mlflow.pyfunc

    checked = []
    for name in workarounds.SERVING_EXAMPLE_CHECKS:
        monkeypatch.setattr(model_utils, name, lambda *args, **kwargs: checked.append(args), raising=False)
    spy = model_utils._validate_serving_input
    logged = log_tiny_model(tmp_path / "skipped")
    assert checked == [] and model_utils._validate_serving_input is spy, "skipped, then put back"
    served = mlflow.pyfunc.load_model(logged.artifact_location).predict(np.full((2, 4), 255, np.uint8))
    assert np.asarray(served).shape == (2, 3)

    # Without the workaround MLflow does call one of those names: the skip above skipped something.
    monkeypatch.setattr(workarounds, "serving_example_check_skipped", contextlib.nullcontext)
    log_tiny_model(tmp_path / "checked")
    assert len(checked) == 1


def test_without_mlflows_serving_example_check_nothing_is_patched(monkeypatch, capsys):
    import mlflow.models.utils as model_utils

    for name in workarounds.SERVING_EXAMPLE_CHECKS:
        monkeypatch.delattr(model_utils, name)
    with workarounds.serving_example_check_skipped():
        assert not any(hasattr(model_utils, name) for name in workarounds.SERVING_EXAMPLE_CHECKS)
        # The check then runs, quietly: model.predict's progress bar would follow the run's epoch lines.
        print("1/1 ━━━━━━━━━━━━━━━━━━━━ 0s 20ms/step")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("level", "newest_quiet_release", "discarded"), [
    ("3", (2, 16), True),  # what import_keras sets by default: TensorFlow's start-up notices go nowhere
    ("0", (2, 16), False),  # the user lowered the level to see them
    ("3", (99, 0), False),  # a TensorFlow older than the releases known to be noisy: left alone
])
def test_tensorflows_start_up_notices_are_discarded_only_when_asked_and_known(capfd, monkeypatch, level,
                                                                             newest_quiet_release, discarded):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    monkeypatch.setattr(workarounds, "NOISY_TENSORFLOW_FROM", newest_quiet_release)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # as before the first import (put back after)
    with workarounds.tensorflow_start_up_notices_discarded():
        os.write(2, b"cuda_dnn.cc: Unable to register cuDNN factory\n")
    os.write(2, b"after the import\n")
    stderr = capfd.readouterr().err
    assert ("cuDNN" not in stderr) == discarded and "after the import" in stderr


def test_tensorflow_imported_already_leaves_stderr_alone(capfd, monkeypatch):
    import tensorflow  # noqa: F401

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    with workarounds.tensorflow_start_up_notices_discarded():
        os.write(2, b"a real error\n")
    assert "a real error" in capfd.readouterr().err


@pytest.mark.parametrize("users", [None, "1", "0"])
def test_hydra_re_raises_while_the_command_runs_and_the_users_setting_comes_back(monkeypatch, users):
    if users is None:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    else:
        monkeypatch.setenv("HYDRA_FULL_ERROR", users)
    with workarounds.hydra_raises_errors() as show_tracebacks:
        assert os.environ["HYDRA_FULL_ERROR"] == "1" and show_tracebacks == (users == "1")
    assert os.environ.get("HYDRA_FULL_ERROR") == users


def test_a_dataset_another_run_inserted_at_the_same_moment_is_logged_on_the_second_try():
    from mlflow.exceptions import MlflowException

    attempts = []

    def log_inputs():
        attempts.append(1)
        if len(attempts) == 1:
            raise MlflowException('BAD_REQUEST: (psycopg.errors.UniqueViolation) duplicate key value violates unique '
                                  'constraint "dataset_pk"')
        return "logged"

    assert workarounds.retry_dataset_insert_race(log_inputs) == "logged" and len(attempts) == 2

    def refused():
        raise MlflowException("BAD_REQUEST: run abc is not active")

    with pytest.raises(MlflowException, match="not active"):
        workarounds.retry_dataset_insert_race(refused)

