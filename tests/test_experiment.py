"""experiment.run end to end in-process: training on tiny data, recorded in a temporary MLflow store."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import subprocess
import sys
import warnings

import mlflow
import numpy as np
import pytest

from mnist_exp import experiment
from mnist_exp.config.paths import tracking_uri
from mnist_exp.system.errors import ExperimentError, OutOfMemory, TrainingDiverged
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.logged_models import load_logged_model
from mnist_exp.tracking.run_record import RunContext, RunRecorder
from mnist_exp.tracking.store import connect
from tests.conftest import (
    all_runs,
    artifact_paths,
    child_processes,
    compose_cfg,
    living,
    metric_steps,
    store_client,
    write_npz,
)


@pytest.fixture(scope="module")
def shared_runs_dir(tmp_path_factory):
    """One runs_dir (MLflow store and data cache) for the module: creating a store costs seconds. Each test
    records into an experiment of its own, named after the test."""
    return tmp_path_factory.mktemp("experiment") / "runs"


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "mnist.npz")


@pytest.fixture
def experiment_cfg(shared_runs_dir, request):
    """compose(overrides) recording into the shared store, in this test's own experiment."""
    name = re.sub(r"\W", "_", request.node.name)  # a parametrized test's [id] would read as a list
    return lambda *overrides: compose_cfg(shared_runs_dir, f"mlflow.experiment={name}", *overrides)


@pytest.fixture
def tiny(experiment_cfg, tiny_npz):
    """A config for 2 fast epochs on the tiny npz, without the model upload or plots unless asked."""

    def make(*overrides):
        return experiment_cfg(
            f"data.path={tiny_npz}", "epochs=2", "batch_size=32", "model.hidden_units=[32]",
            "mlflow.log_model=false", "plots=false", *overrides,
        )

    return make


def client_for(cfg):
    """A client on the store `cfg` writes to."""
    return store_client(tracking_uri(cfg))


def runs_of(cfg) -> list:
    """The runs of `cfg`'s experiment."""
    return all_runs(client_for(cfg), cfg.mlflow.experiment)


def test_run_records_params_epochs_results_and_artifacts(tiny):
    cfg = tiny("mlflow.log_model=true", "optimizer=adam", "plots=true")
    outcome = experiment.run(cfg, overrides=["optimizer=adam", "epochs=2"])
    assert outcome["val_accuracy"] > 0.5 and 0.0 <= outcome["test_accuracy"] <= 1.0
    assert outcome["epochs_completed"] == 2

    client = client_for(cfg)
    run = client.get_run(outcome["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "optimizer=adam epochs=2"
    params = run.data.params
    assert params["optimizer.name"] == "adam" and params["model.hidden_units"] == "[32]"
    assert params["dataset.name"] == "mnist" and params["dataset.test_examples"] == "100"
    assert params["dataset.fallback"] == "false" and len(params["dataset.digest"]) == 16
    assert run.data.tags[run_tags.OVERRIDES_TAG] == "optimizer=adam epochs=2"

    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"):
        assert metric_steps(client, run.info.run_id, key) == [1, 2], key
    assert run.data.metrics["test_accuracy"] == pytest.approx(outcome["test_accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1

    assert {"config.yaml", "overrides.txt", "plots"} <= artifact_paths(client, run.info.run_id)
    assert artifact_paths(client, run.info.run_id, "plots") == {
        "plots/learning_curves.png", "plots/confusion_matrix.png", "plots/misclassified.png"
    }
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"train", "validation", "test"}

    info = mlflow.models.get_model_info(outcome["model_uri"])
    assert info.signature.inputs.inputs[0].name == "pixels" and info.saved_input_example_info is not None
    model = mlflow.keras.load_model(outcome["model_uri"])
    predictions = model.predict(np.zeros((3, 784), dtype=np.uint8), verbose=0)
    assert predictions.shape == (3, 10)


def test_a_run_records_its_model_size_once_at_step_0_and_returns_it(tiny):
    cfg = tiny("model.hidden_units=[32,16]")
    outcome = experiment.run(cfg)
    size = {"parameters": 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10, "macs_per_example": 784 * 32 + 32 * 16 + 16 * 10}
    assert {key: outcome[key] for key in size} == size
    client = client_for(cfg)
    for key, value in size.items():
        assert [(p.step, p.value) for p in client.get_metric_history(outcome["run_id"], key)] == [(0, value)], key


def test_a_run_optimising_the_model_size_returns_it_and_watches_a_validation_metric_while_training(tiny):
    cfg = tiny("optimized_metric=parameters", "epochs=3", "early_stopping_patience=1", "reduce_lr_patience=1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = experiment.run(cfg)
    assert outcome[cfg.optimized_metric] == 784 * 32 + 32 + 32 * 10 + 10
    unwatchable = [str(w.message) for w in caught if "not available" in str(w.message)]
    assert not unwatchable, "early stopping and LR reduction watch a metric the epochs have"


def test_a_run_draws_its_pictures_itself_and_starts_no_process(tiny, caplog):
    before = living(child_processes(os.getpid()))
    cfg = tiny("plots=true")
    outcome = experiment.run(cfg)
    assert "no plots for run" not in caplog.text
    assert len(artifact_paths(client_for(cfg), outcome["run_id"], "plots")) == 3
    assert living(child_processes(os.getpid())) == before


def test_plots_false_draws_nothing(tiny):
    cfg = tiny()
    outcome = experiment.run(cfg)
    assert "plots" not in artifact_paths(client_for(cfg), outcome["run_id"])


def test_a_plot_that_fails_leaves_a_finished_run_and_a_warning(tiny, monkeypatch, caplog):
    from mnist_exp.reports import plots

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "write_run_plots", broken)
    cfg = tiny("plots=true")
    outcome = experiment.run(cfg)
    assert client_for(cfg).get_run(outcome["run_id"]).info.status == "FINISHED"
    assert "no plots for run" in caplog.text and "No space left on device" in caplog.text


@pytest.mark.slow  # two trainings on real digits
def test_same_config_and_seed_give_identical_scores_on_real_digits(experiment_cfg):
    cfg = experiment_cfg("data=mnist_sample", "epochs=2", "plots=false", "mlflow.log_model=false", "seed=7")
    first, second = experiment.run(cfg), experiment.run(cfg)
    client = client_for(cfg)
    curves = [[p.value for p in client.get_metric_history(o["run_id"], "val_accuracy")] for o in (first, second)]
    assert len(curves[0]) == 2 and curves[0] == curves[1]
    assert first["test_accuracy"] == second["test_accuracy"]


@pytest.mark.slow  # two trainings
def test_same_seed_same_metrics(tiny):
    first = experiment.run(tiny("seed=3"))
    second = experiment.run(tiny("seed=3"))
    client = client_for(tiny())
    curves = [
        [p.value for p in client.get_metric_history(o["run_id"], "val_accuracy")] for o in (first, second)
    ]
    assert curves[0] == curves[1]
    assert first["test_accuracy"] == second["test_accuracy"] and first["val_loss"] == second["val_loss"]


def test_bad_config_creates_no_run(tiny):
    with pytest.raises(ExperimentError, match="epochs=0 is invalid"):
        experiment.run(tiny("epochs=0"))
    with pytest.raises(ExperimentError, match="does not exist"):
        experiment.run(tiny("data.path=/no/such/file.npz"))
    assert runs_of(tiny()) == []


def test_divergence_fails_the_run_with_the_reason(tiny):
    cfg = tiny("optimizer=sgd", "optimizer.lr=10", "model.activation=linear", "model.hidden_units=[512,512]",
               "epochs=3")
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf) at epoch 1"):
        experiment.run(cfg)
    (run,) = runs_of(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags[run_tags.FAILURE_TAG].startswith("TrainingDiverged: loss became ")
    assert run.data.metrics["parameters"] == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10, \
        "no epoch was recorded: the run's end records the model's size"


def _tensorflow_out_of_memory():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, (
        "{{function_node __wrapped__MatMul_device_/job:localhost/replica:0/task:0/device:CPU:0}} OOM when allocating "
        "tensor with shape[32,65536] and type float on /job:localhost/replica:0/task:0/device:CPU:0 by allocator "
        "mklcpu [Op:MatMul] name: "))


@pytest.mark.parametrize("exhausted, reason", [
    (_tensorflow_out_of_memory, "OOM when allocating tensor with shape[32,65536] and type float"),
    (MemoryError, "MemoryError"),  # Python's, and C++'s std::bad_alloc as it reaches Python
], ids=["tensorflow", "python"])
def test_running_out_of_memory_while_training_fails_the_run_in_one_line(tiny, exhausted, reason):
    """Raised from inside fit() (the epoch hook is a Keras callback): once a traceback and exit 1."""
    def out_of_memory(epoch, metrics):
        raise exhausted()

    cfg = tiny("epochs=3")
    with pytest.raises(OutOfMemory) as failed:
        experiment.run(cfg, context=RunContext(on_epoch=out_of_memory))
    message = str(failed.value)
    assert isinstance(failed.value, ExperimentError) and "\n" not in message  # one line, exit 2
    assert message == (f"out of memory training model=mlp (model.hidden_units=[32]) with batch_size=32: {reason}; "
                       "use smaller layers or batches")
    (run,) = runs_of(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags[run_tags.FAILURE_TAG] == f"OutOfMemory: {message}"


def test_interrupt_marks_the_run_killed_with_the_epochs_so_far(tiny, monkeypatch):
    original = RunRecorder.log_epoch

    def interrupt_after_first(self, epoch, metrics):
        original(self, epoch, metrics)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "log_epoch", interrupt_after_first)
    cfg = tiny("epochs=3")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg)
    (run,) = runs_of(cfg)
    assert run.info.status == "KILLED"
    assert metric_steps(client_for(cfg), run.info.run_id, "val_accuracy") == [1]


def test_a_run_interrupted_before_its_first_epoch_is_recorded_has_the_model_size(tiny, monkeypatch):
    def interrupt(self, epoch, metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunRecorder, "log_epoch", interrupt)
    cfg = tiny("epochs=3")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg)
    (run,) = runs_of(cfg)
    assert run.info.status == "KILLED" and "val_accuracy" not in run.data.metrics
    assert metric_steps(client_for(cfg), run.info.run_id, "macs_per_example") == [0]
    assert run.data.metrics["macs_per_example"] == 784 * 32 + 32 * 10


def test_store_that_is_not_a_database(tiny, tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("these are not the runs you are looking for\n")
    with pytest.raises(ExperimentError, match="is not an SQLite database"):
        experiment.run(tiny(f"mlflow.tracking_uri=sqlite:///{bogus}"))


def test_an_sqlite_file_of_something_else_is_refused_and_left_alone(tiny, tmp_path):
    other = tmp_path / "inventory.db"
    with contextlib.closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE parts (name TEXT)")
        connection.commit()
    before = other.read_bytes()
    with pytest.raises(ExperimentError, match="is an SQLite database but not an MLflow store .it holds parts."):
        experiment.run(tiny(f"mlflow.tracking_uri=sqlite:///{other}"))
    assert other.read_bytes() == before


def test_runs_dir_that_cannot_be_created(tiny, tmp_path):
    # A path under a regular file cannot be created even by root (a read-only folder would not stop root).
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ExperimentError, match="cannot create .* for the MLflow store"):
        experiment.run(tiny(f"runs_dir={blocker}/runs"))


def test_learning_rate_reduction_is_recorded(tiny):
    outcome = experiment.run(tiny("epochs=4", "reduce_lr_patience=1", "optimizer.lr=0.05"))
    rates = [p.value for p in client_for(tiny()).get_metric_history(outcome["run_id"], "learning_rate")]
    assert len(rates) == 4 and rates[0] == pytest.approx(0.05)
    assert all(earlier >= later for earlier, later in zip(rates, rates[1:], strict=False))


@pytest.mark.slow  # a training per schedule
def test_a_learning_rate_schedule_is_recorded_every_epoch_and_ends_at_zero(tiny):
    for schedule in ("cosine", "one_cycle"):
        outcome = experiment.run(tiny("epochs=5", f"lr_schedule={schedule}", "optimizer.lr=0.01"))
        rates = [p.value for p in client_for(tiny()).get_metric_history(outcome["run_id"], "learning_rate")]
        assert len(rates) == 5 and rates[-1] == pytest.approx(0, abs=1e-9) and max(rates) <= 0.01, (schedule, rates)
        falling = rates if schedule == "cosine" else rates[rates.index(max(rates)):]
        assert all(earlier > later for earlier, later in zip(falling, falling[1:], strict=False)), (schedule, rates)
        if schedule == "one_cycle":  # 30% of the steps rising: the end of epoch 1 is still on the way up
            assert rates[0] < rates[1] and rates.index(max(rates)) == 1, rates


def test_a_cnn_with_label_smoothing_and_shifted_images_trains_logs_and_loads(experiment_cfg, tiny_npz):
    import mlflow
    import numpy as np

    cfg = experiment_cfg(f"data.path={tiny_npz}", "epochs=2", "batch_size=32", "plots=false", "model=cnn",
                         "model.filters=[4]", "model.dense_units=[]", "label_smoothing=0.2", "data.augment=2")
    outcome = experiment.run(cfg)
    client = client_for(cfg)
    run = client.get_run(outcome["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "cnn"
    assert run.data.params["label_smoothing"] == "0.2" and run.data.params["data.augment"] == "2"
    # Cross-entropy against smoothed targets (0.82 on the class, 0.02 on each other) cannot go below their entropy.
    floor = -(0.82 * np.log(0.82) + 9 * 0.02 * np.log(0.02))
    losses = [p.value for p in client.get_metric_history(outcome["run_id"], "loss")]
    assert len(losses) == 2 and min(losses) >= floor - 1e-3
    assert 0 <= outcome["test_accuracy"] <= 1 and outcome["test_loss"] >= floor - 1e-3
    model = mlflow.keras.load_model(outcome["model_uri"])  # the loss and optimizer are Keras' own: no custom objects
    assert model.loss.get_config()["label_smoothing"] == pytest.approx(0.2)


def test_early_stopping_keeps_the_best_epoch(tiny):
    outcome = experiment.run(tiny("epochs=6", "early_stopping_patience=1", "optimized_metric=val_loss",
                                  "optimizer.lr=0.05"))
    client = client_for(tiny())
    val_losses = [p.value for p in client.get_metric_history(outcome["run_id"], "val_loss")]
    assert outcome["val_loss"] == pytest.approx(min(val_losses), rel=1e-4)


@pytest.mark.slow  # a process of its own, then a training
def test_runs_left_running_by_a_dead_process_are_killed_at_the_next_start(tiny, tmp_path):
    cfg = tiny()
    store = connect(cfg)
    client = store.client
    # The full stamp (host, PID, PID namespace, start time) of a process that has ended.
    dead = subprocess.run([sys.executable, "-c", "from mnist_exp.system.processes import owner; print(owner())"],
                          capture_output=True, text=True, check=True)
    stamp = dead.stdout.strip()
    orphan = client.create_run(store.experiment_id, tags={run_tags.OWNER_TAG: stamp})
    # A stamp written before stamps had four fields: host:pid.
    old_orphan = client.create_run(store.experiment_id, tags={run_tags.OWNER_TAG: ":".join(stamp.split(":")[:2])})
    elsewhere = client.create_run(store.experiment_id, tags={run_tags.OWNER_TAG: "another-host:1"})
    # Killed in another experiment of the store while saving its model: the model stays PENDING.
    other_experiment = client.create_experiment("another-experiment", artifact_location=tmp_path.as_uri())
    saving = client.create_run(other_experiment, tags={run_tags.OWNER_TAG: stamp})
    half_saved = client.create_logged_model(other_experiment, source_run_id=saving.info.run_id, name="model")

    experiment.run(cfg)
    assert client.get_run(saving.info.run_id).info.status == "RUNNING", "another experiment's, left to its next run"
    experiment.run(tiny("mlflow.experiment=another-experiment"))
    for run in (orphan, old_orphan, saving):
        assert client.get_run(run.info.run_id).info.status == "KILLED"
        assert "process died" in client.get_run(run.info.run_id).data.tags[run_tags.FAILURE_TAG]
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"  # cannot know: left alone
    assert str(client.get_logged_model(half_saved.model_id).status) == "FAILED"
    with pytest.raises(ExperimentError, match=f"^the model of run {saving.info.run_id} was never saved whole "
                                              r"\(status FAILED"):
        load_logged_model(tracking_uri(cfg), run_id=saving.info.run_id)


def test_a_run_interrupted_while_saving_its_model_leaves_it_failed_not_pending(tiny, monkeypatch):
    """Ctrl-C or SIGTERM (a KeyboardInterrupt) while MLflow writes the model: MLflow fails a logged model only on
    an Exception, so the model stayed PENDING beside the KILLED run."""
    import mlflow.keras

    from mnist_exp.tracking.logged_models import logged_models

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.keras, "save_model", interrupted)
    cfg = tiny("epochs=1", "mlflow.log_model=true")
    with pytest.raises(KeyboardInterrupt):
        experiment.run(cfg)
    (run,) = runs_of(cfg)
    assert run.info.status == "KILLED"
    (model,) = logged_models(client_for(cfg), run.info.experiment_id, run.info.run_id)
    assert str(model.status) == "FAILED"


def test_git_is_asked_once_per_process_and_never_fails_a_run(tmp_path, monkeypatch):
    """Each run once called `git status` in the checkout: a huge or read-only one should not slow or fail runs."""
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda command, **options: calls.append(options["env"]) or real_run(
        command, **options))
    run_tags.source_tags.cache_clear()
    try:
        first = run_tags.source_tags()
        asked = len(calls)  # rev-parse and status (rev-parse alone where the code is no checkout)
        assert run_tags.source_tags() == first and len(calls) == asked
        assert all(env["GIT_OPTIONAL_LOCKS"] == "0" for env in calls), "git status may not write the index"
        run_tags.source_tags.cache_clear()
        monkeypatch.setattr(run_tags.paths, "PROJECT_ROOT", tmp_path)  # not a checkout
        assert run_tags.source_tags() == {}
    finally:
        run_tags.source_tags.cache_clear()


@pytest.mark.slow  # several trainings
def test_the_models_of_earlier_trials_are_collected_not_frozen(tiny, tmp_path):
    """The imports are frozen out of the collection before each model (it walked them for half a second a
    trial); what a model makes must stay collectable, or every trial of a search would leak its model."""
    import gc
    import weakref

    from mnist_exp.data import load_dataset
    from mnist_exp.training.train import train_and_evaluate

    cfg = tiny("epochs=1")
    dataset = load_dataset(cfg.data, seed=cfg.seed, cache_dir=tmp_path / "cache")
    first = weakref.ref(train_and_evaluate(cfg, dataset).model)
    assert gc.get_freeze_count() > 0
    train_and_evaluate(cfg, dataset)
    assert first() is None, "the first model was frozen with the imports"
