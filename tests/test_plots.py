"""The pictures a run and a sweep leave: real PNG files with the content they claim."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from mnist_exp.reports import plots
from tests.conftest import CONF_DIR

# Class names as the datasets' configs give them: long ones (Fashion-MNIST) must fit the pictures too.
DIGITS = tuple(OmegaConf.load(CONF_DIR / "data" / "mnist.yaml").class_names)
FASHION_CLASSES = tuple(OmegaConf.load(CONF_DIR / "data" / "fashion_mnist.yaml").class_names)


def is_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_confusion_counts_put_true_classes_in_rows():
    counts = plots.confusion_counts(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), classes=3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_run_plots_are_three_pngs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 784), dtype=np.uint8)
    labels = rng.integers(0, 10, size=50, dtype=np.uint8)
    predictions = labels.copy()
    predictions[:7] = (labels[:7] + 1) % 10
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.6, 0.8], "val_accuracy": [0.5, 0.7]}
    paths = plots.write_run_plots(tmp_path / "plots", history, images, labels, predictions, FASHION_CLASSES)
    assert [p.name for p in paths] == ["learning_curves.png", "confusion_matrix.png", "misclassified.png"]
    assert all(is_png(p) for p in paths)


def test_a_perfect_model_still_gets_a_misclassified_picture(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = plots.misclassified(tmp_path / "m.png", np.zeros((10, 784), np.uint8), labels, labels, DIGITS)
    assert is_png(path, min_size=(100, 100))


def test_sweep_plot_shows_only_parameters_that_vary(tmp_path):
    rows = [
        {"final_val_accuracy": score, "params.optimizer.lr": lr, "params.optimizer.name": name, "params.epochs": "5"}
        for score, lr, name in ((0.9, "0.001", "adam"), (0.8, "0.1", "sgd"), (None, "10", "sgd"))
    ]
    path = plots.sweep_parameters(tmp_path / "s.png", rows, "val_accuracy")
    assert path is not None and is_png(path)
    assert plots.sweep_parameters(tmp_path / "none.png", rows[:1], "val_accuracy") is None
    assert not (tmp_path / "none.png").exists()


def test_a_search_picture_that_cannot_be_drawn_is_a_warning_and_the_others_are_drawn(tmp_path, monkeypatch, caplog):
    from types import SimpleNamespace

    import optuna

    from mnist_exp.multirun.search import search_plots

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 0.001, 0.1) + trial.suggest_int("width", 8, 64), n_trials=4)

    def broken(*args, **kwargs):
        raise OSError("database is locked")

    monkeypatch.setattr(optuna.visualization.matplotlib, "plot_optimization_history", broken)
    result = SimpleNamespace(study_name="s", storage=storage, metric="val_accuracy", objectives={})
    written = search_plots.search_plots(result, tmp_path / "plots")
    assert [path.name for path in written] == ["param_importances.png", "param_importances.html"]
    assert all(is_png(path) for path in written if path.suffix == ".png")
    assert "no optimization_history plot: OSError: database is locked" in caplog.text
