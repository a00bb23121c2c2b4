"""Using trained models: predictions on picture files, the registry's champion, the runs table, and serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
from PIL import Image

from mnist_exp import experiment
from mnist_exp.commands import predict, runs
from mnist_exp.config.paths import tracking_uri
from mnist_exp.data import load_dataset
from mnist_exp.tracking.logged_models import register_champion
from tests.conftest import compose_cfg, free_port, wait_for_http

SAMPLES = 12


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained for 3 epochs on the 5,000 real MNIST digits, logged in a temporary store shared by the
    module's tests (they add no runs to it, except the runs table's test)."""
    runs_dir = tmp_path_factory.mktemp("trained") / "runs"
    cfg = compose_cfg(runs_dir, "data=mnist_sample", "epochs=3", "plots=false", "mlflow.log_model=true")
    outcome = experiment.run(cfg, overrides=["data=mnist_sample", "epochs=3"])
    return cfg, outcome


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    """A small convolutional network trained for 2 epochs on the real digits, in a store of its own."""
    runs_dir = tmp_path_factory.mktemp("trained-cnn") / "runs"
    overrides = ["data=mnist_sample", "epochs=2", "model=cnn", "model.filters=[8,16]", "model.dense_units=[32]"]
    cfg = compose_cfg(runs_dir, *overrides, "plots=false")  # registered as mnist-cnn: named after its model
    return cfg, experiment.run(cfg, overrides=overrides)


@pytest.fixture(scope="module")
def real_digits(tmp_path_factory):
    """The 5,000 real MNIST digits shipped with the package, as the mnist_sample config loads them."""
    cfg = compose_cfg(tmp_path_factory.mktemp("digits") / "runs", "data=mnist_sample", "data.cache=false")
    return load_dataset(cfg.data, seed=0)


def named_registry(cfg, name: str):
    """`cfg` with mlflow.registered_model=name, on the same store: each test registers under its own name."""
    return compose_cfg(Path(cfg.runs_dir), "data=mnist_sample", f"mlflow.registered_model={name}")


def photographed_digits(sample, folder, count=SAMPLES):
    """Real test digits as a person's picture would be: dark ink on light grey paper, 4x larger, RGB."""
    paths = []
    for index in range(count):
        digit = sample.x_test[index].reshape(28, 28)
        paper = (235 - digit.astype(np.int32) * 220 // 255).astype(np.uint8)
        picture = Image.fromarray(np.pad(paper, 10, constant_values=235)).resize((192, 192)).convert("RGB")
        path = folder / f"digit{index}-{sample.y_test[index]}.png"
        picture.save(path)
        paths.append(path)
    return paths, [str(label) for label in sample.y_test[:count]]


def predicted_classes(output: str) -> list[str]:
    return [line.split(": ", 1)[1].split()[0] for line in output.splitlines()]


def test_predict_reads_pictures_and_names_digits(trained, real_digits, tmp_path, capsys):
    cfg, outcome = trained
    paths, truth = photographed_digits(real_digits, tmp_path)
    uri = tracking_uri(cfg)
    assert predict.main([*map(str, paths), "--run", outcome["run_id"], "--tracking-uri", uri]) == 0
    output = capsys.readouterr().out
    assert len(output.splitlines()) == SAMPLES and "(top 3: " in output
    correct = sum(p == t for p, t in zip(predicted_classes(output), truth, strict=True))
    assert correct >= SAMPLES - 2, output


def test_the_champion_alias_serves_predictions(trained, real_digits, tmp_path, capsys):
    cfg, outcome = trained
    named = named_registry(cfg, "alias-test")
    assert register_champion(named, outcome["run_id"]) == "alias-test/1"
    assert register_champion(named, outcome["run_id"]) == "alias-test/2", "a new version moves the alias"
    paths, _ = photographed_digits(real_digits, tmp_path, count=2)
    uri = tracking_uri(cfg)
    assert predict.main([*map(str, paths), "--model", "models:/alias-test@champion", "--tracking-uri", uri]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_a_cnn_is_predicted_registered_and_loaded_like_the_mlp(trained_cnn, real_digits, tmp_path, capsys):
    """The same flat uint8 pixels in, the same probabilities out: predict, the registry and pyfunc need nothing new."""
    cfg, outcome = trained_cnn
    assert register_champion(cfg, outcome["run_id"]).startswith("mnist-cnn/"), "named after its model"
    paths, truth = photographed_digits(real_digits, tmp_path)
    assert predict.main([*map(str, paths), "--model", "models:/mnist-cnn@champion",
                         "--tracking-uri", tracking_uri(cfg)]) == 0
    correct = sum(p == t for p, t in zip(predicted_classes(capsys.readouterr().out), truth, strict=True))
    assert correct >= SAMPLES - 3
    mlflow.set_tracking_uri(tracking_uri(cfg))
    model = mlflow.pyfunc.load_model(outcome["model_uri"])
    assert [(spec.type.name, spec.shape) for spec in model.metadata.get_input_schema().inputs] == [("uint8", (-1, 784))]
    probabilities = np.asarray(model.predict(real_digits.x_test[:50]))
    assert probabilities.shape == (50, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (probabilities.argmax(axis=1) == real_digits.y_test[:50]).sum() >= 40


def test_predict_errors_are_one_line(trained, real_digits, tmp_path, capsys):
    cfg, outcome = trained
    uri = tracking_uri(cfg)
    (tmp_path / "notes.png").write_text("not a picture")
    paths, _ = photographed_digits(real_digits, tmp_path, count=1)
    cases = [
        ([str(tmp_path / "notes.png"), "--run", outcome["run_id"]], "notes.png: not a readable image"),
        ([str(paths[0]), "--run", "0" * 32], "cannot load"),
        ([str(paths[0]), "--model", "models:/nobody@champion"], "cannot load models:/nobody@champion"),
        ([str(paths[0]), "--run", outcome["run_id"], "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
         "no MLflow store"),
        ([str(paths[0]), "--run", outcome["run_id"], "--tracking-uri", "ftp://x"], "--tracking-uri ftp://x is invalid"),
        ([str(paths[0]), "--model", "runs:/"], "--model runs:/: expected runs:/RUN_ID/model"),
    ]
    for args, message in cases:
        if "--tracking-uri" not in args:
            args += ["--tracking-uri", uri]
        assert predict.main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_runs_lists_newest_first_and_the_best_per_experiment(trained, capsys):
    cfg, first = trained
    second = experiment.run(
        compose_cfg(Path(cfg.runs_dir), "data=mnist_sample", "epochs=1", "plots=false", "mlflow.log_model=false")
    )
    uri = tracking_uri(cfg)
    capsys.readouterr()  # training's progress lines
    assert runs.main(["--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["run", "id", "experiment", "name"]
    assert [line.split()[0] for line in lines[1:]] == [second["run_id"], first["run_id"]]
    assert f"{first['val_accuracy']:.4f}" in lines[2] and "mnist_sample" in lines[2]
    assert runs.main(["--tracking-uri", uri, "--best"]) == 0
    best = capsys.readouterr().out.splitlines()
    winner = max((first, second), key=lambda o: o["val_accuracy"])
    assert len(best) == 2 and best[1].split()[0] == winner["run_id"]
    assert runs.main(["--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment named nope" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_mlflow_serves_the_champion_over_http(request, model, real_digits):
    """`mlflow models serve -m models:/mnist-<model>@champion` answers a batch of real digits as the model does."""
    cfg, outcome = request.getfixturevalue("trained" if model == "mlp" else "trained_cnn")
    name = f"mnist-{model}"
    assert register_champion(cfg, outcome["run_id"]).startswith(f"{name}/")
    port = free_port()
    venv_bin = Path(sys.executable).parent
    # MLflow starts `uvicorn` from PATH: the environment's bin folder must be on it (as in an activated venv).
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(cfg), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [str(venv_bin / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server)
        batch, truth = real_digits.x_test[:20], real_digits.y_test[:20]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": batch.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            served = np.asarray(json.load(reply)["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert served.shape == (20, 10)
    local = mlflow.keras.load_model(outcome["model_uri"]).predict(batch, verbose=0)
    assert np.array_equal(served.argmax(axis=1), local.argmax(axis=1))
    assert (served.argmax(axis=1) == truth).sum() >= 16


def test_predict_takes_a_runs_uri_and_warns_about_a_blank_picture(trained, tmp_path, capsys):
    cfg, outcome = trained
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    args = [str(blank), "--model", f"runs:/{outcome['run_id']}/model", "--tracking-uri", tracking_uri(cfg)]
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == f"warning: {blank}: no ink found (a blank picture); its class below is a guess"
    assert captured.out.startswith(f"{blank}: ")


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)  # 64 million pixels in a few kB
    assert bomb.stat().st_size < 200_000
    assert predict.main([str(bomb), "--run", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {bomb}: 8000x8000 pixels, more than the 50,000,000 a picture may have"
    )


def test_models_predict_cannot_use_are_one_line(real_digits, tmp_path, capsys):
    """Another flavour, a Keras model of another input shape, a damaged model file: one line each."""
    import keras

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    # Artifacts beside the store: MLflow's default is ./mlruns in the working directory.
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).create_experiment(
        "others", artifact_location=(tmp_path / "artifacts").as_uri()))
    paths, _ = photographed_digits(real_digits, tmp_path, count=1)

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    with mlflow.start_run() as pyfunc_run:
        mlflow.pyfunc.log_model(name="model", python_model=Constant(), pip_requirements=[])
    narrow = keras.Sequential([keras.Input(shape=(10,)), keras.layers.Dense(10, activation="softmax")])
    with mlflow.start_run() as narrow_run:
        mlflow.keras.log_model(narrow, name="model", pip_requirements=[])
    with mlflow.start_run() as damaged_run:
        info = mlflow.keras.log_model(narrow, name="model", pip_requirements=[])
    stored = Path(urlparse(mlflow.get_logged_model(info.model_id).artifact_location).path)
    model_file = next(stored.rglob("*.keras"))
    model_file.write_bytes(model_file.read_bytes()[:100])  # truncated
    capsys.readouterr()  # what logging the models printed
    for run, message in [(pyfunc_run, "is not a Keras model (its flavors: python_function)"),
                         (narrow_run, "takes input of shape (None, 10), not 784 pixels")]:
        assert predict.main([str(paths[0]), "--run", run.info.run_id, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert predict.main([str(paths[0]), "--run", damaged_run.info.run_id, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model of run" in err and len(err.strip().splitlines()) == 1, err


def test_a_stored_model_that_would_run_code_is_refused_in_one_line(real_digits, tmp_path, capsys):
    """What a store holds is data: a Keras model whose Lambda layer is Python code, or an exported SavedModel
    (a graph of whatever ops its author chose), is refused before it runs."""
    import keras

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).create_experiment(
        "others", artifact_location=(tmp_path / "artifacts").as_uri()))
    paths, _ = photographed_digits(real_digits, tmp_path, count=1)
    marker = tmp_path / "ran"
    marker_name = str(marker)
    with_code = keras.Sequential([keras.Input(shape=(784,)),
                                  keras.layers.Lambda(lambda x: x + 0 * len(open(marker_name, "w").name)),
                                  keras.layers.Dense(10, activation="softmax")])
    marker.unlink()
    with mlflow.start_run() as code_run:
        mlflow.keras.log_model(with_code, name="model", pip_requirements=[])
    plain = keras.Sequential([keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax")])
    with mlflow.start_run() as exported_run:
        mlflow.keras.log_model(plain, name="model", pip_requirements=[], save_exported_model=True,
                               signature=mlflow.models.infer_signature(np.zeros((1, 784), np.float32),
                                                                       np.zeros((1, 10), np.float32)))
    capsys.readouterr()
    for run, message in [(code_run, "Requested the deserialization of a `Lambda` layer"),
                         (exported_run, "is an exported TensorFlow SavedModel; predict loads only models in Keras'")]:
        assert predict.main([str(paths[0]), "--run", run.info.run_id, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists(), "the layer's code never ran"


def test_a_fifo_is_one_line_and_never_opened(tmp_path, capsys):
    """`mkfifo f.png; predict f.png` once waited for ever for a writer."""
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "mnist_exp.predict", str(fifo), "--run", "0" * 32,
         "--tracking-uri", f"sqlite:///{tmp_path}/none.db"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )
    assert (result.returncode, result.stderr) == (
        2, f"error: {fifo}: a FIFO, not a regular file; only picture files are read\n"), result.stderr


def test_16_bit_and_float_pictures_are_predicted_like_8_bit_ones(trained, real_digits, tmp_path, capsys):
    """A 16-bit PNG was clipped to white (a digit fell to 0.285 confidence), a float TIFF in [0, 1] was "blank"."""
    cfg, outcome = trained
    paths, truth = photographed_digits(real_digits, tmp_path, count=4)
    deep = []
    for path in paths:
        levels = np.asarray(Image.open(path).convert("L"))
        Image.fromarray(levels.astype(np.uint16) * 257).save(path.with_suffix(".16.png"))
        Image.fromarray((levels / 255).astype(np.float32)).save(path.with_suffix(".tiff"))
        deep += [path.with_suffix(".16.png"), path.with_suffix(".tiff")]
    args = ["--run", outcome["run_id"], "--tracking-uri", tracking_uri(cfg)]
    assert predict.main([*map(str, paths), *args]) == 0
    eight_bit = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert predict.main([*map(str, deep), *args]) == 0
    captured = capsys.readouterr()
    assert "no ink" not in captured.err
    assert [line.split(": ", 1)[1] for line in captured.out.splitlines()] == [p for p in eight_bit for _ in (0, 1)]


def test_predict_says_why_a_run_has_no_model(tmp_path, capsys):
    """Not always mlflow.log_model=false: a sweep's parent logs none, a KILLED or FAILED run may have ended first."""
    from mnist_exp.tracking import run_tags

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("runs", artifact_location=(tmp_path / "artifacts").as_uri())

    def run(status: str, tags=None, params=None) -> str:
        run_id = client.create_run(experiment_id, tags=tags or {}).info.run_id
        for key, value in (params or {}).items():
            client.log_param(run_id, key, value)
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        return run_id

    best = run("FINISHED", params={"mlflow.log_model": "true"})
    cases = {
        run("FINISHED", {run_tags.SWEEP_TAG: "true", "best_child_run_id": best}):
            "is a sweep's parent run, which logs no model; predict with one of its runs, e.g. its best: "
            f"--run {best}",
        run("FINISHED", {run_tags.SWEEP_TAG: "true"}): "is a sweep's parent run, which logs no model; predict with "
                                                      "one of its runs",
        run("KILLED", {run_tags.FAILURE_TAG: "interrupted"}, {"mlflow.log_model": "true"}):
            "was KILLED before its model was saved (interrupted)",
        run("FAILED", params={"mlflow.log_model": "true"}): "was FAILED before its model was saved",
        run("RUNNING", params={"mlflow.log_model": "true"}): "is RUNNING: its model is saved when it finishes",
        run("KILLED", params={"mlflow.log_model": "false"}): "has no logged model: it was run with "
                                                             "mlflow.log_model=false",
    }
    picture = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(picture)
    for run_id, why in cases.items():
        assert predict.main([str(picture), "--run", run_id, "--tracking-uri", uri]) == 2
        assert capsys.readouterr().err == f"error: run {run_id} {why}\n"
