"""Pictures of a run (learning curves, confusion matrix, misclassified images), of a sweep and of a search.

Drawn after training on `matplotlib.figure.Figure`s, each with its own Agg canvas: no pyplot state, no
backend switched for the process, nothing shared between threads; matplotlib is imported on first use.
No MLflow here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
MAX_MISCLASSIFIED = 36


def pyplot():
    """matplotlib.pyplot on Agg, for the libraries that draw through it (Optuna's plots)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _figure(rows: int = 1, columns: int = 1, **settings: Any):
    """A new Figure and its axes (as Figure.subplots returns them)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=settings.pop("figsize"))
    return figure, figure.subplots(rows, columns, **settings)


def write_run_plots(
    folder: Path,
    history: Mapping[str, Sequence[float]],
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    class_names: Sequence[str],
) -> list[Path]:
    """learning_curves.png, confusion_matrix.png and misclassified.png for one run, in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        learning_curves(folder / "learning_curves.png", history),
        confusion_matrix(folder / "confusion_matrix.png", labels, predictions, class_names),
        misclassified(folder / "misclassified.png", images, labels, predictions, class_names),
    ]


def learning_curves(path: Path, history: Mapping[str, Sequence[float]]) -> Path:
    """Loss and accuracy per epoch, training against validation."""
    figure, axes = _figure(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = history.get(key) or []
            axis.plot(range(1, len(values) + 1), values, style, label=label, markersize=4)
        axis.set(title=metric, xlabel="epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return counts


def confusion_matrix(path: Path, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> Path:
    """Test-set counts, true class by row, predicted class by column."""
    counts = confusion_counts(labels, predictions, len(class_names))
    figure, axis = _figure(figsize=(8, 7))
    shown = axis.imshow(counts, cmap="Blues")
    figure.colorbar(shown, ax=axis, fraction=0.046)
    ticks = range(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right")
    axis.set_yticks(ticks, class_names)
    axis.set(xlabel="predicted", ylabel="true",
             title=f"test set: {int(np.trace(counts))} of {int(counts.sum())} correct")
    threshold = counts.max() / 2
    for (true, predicted), count in np.ndenumerate(counts):
        axis.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                  color="white" if count > threshold else "black")
    return _save(figure, path)


def misclassified(
    path: Path, images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]
) -> Path:
    """Up to MAX_MISCLASSIFIED wrongly classified test images, each titled 'true -> predicted'."""
    wrong = np.flatnonzero(labels != predictions)
    shown = wrong[:MAX_MISCLASSIFIED]
    columns, cell, caption = 6, 28 + 4, 12
    rows = max(1, math.ceil(len(shown) / columns))
    # One picture of all tiles: a single image draws several times faster than a grid of axes.
    montage = np.zeros((rows * (cell + caption), columns * cell), dtype=np.uint8)
    for slot, index in enumerate(shown):
        top, left = (slot // columns) * (cell + caption) + caption, (slot % columns) * cell
        montage[top + 2:top + 30, left + 2:left + 30] = images[index].reshape(28, 28)
    figure, axis = _figure(figsize=(columns * 1.3, rows * 1.45 + 0.6))
    axis.imshow(montage, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axis.axis("off")
    for slot, index in enumerate(shown):
        axis.text((slot % columns) * cell + cell / 2, (slot // columns) * (cell + caption) + caption - 1,
                  f"{class_names[labels[index]]} -> {class_names[predictions[index]]}",
                  ha="center", va="bottom", fontsize=7, color="white")
    if not len(shown):
        axis.text(columns * cell / 2, caption, "no misclassified test images", ha="center", fontsize=10, color="white")
    axis.set_title(f"misclassified test images, true -> predicted: {len(wrong)} of {len(labels)}", fontsize=9)
    return _save(figure, path)


def sweep_parameters(path: Path, rows: Sequence[Mapping[str, Any]], metric: str) -> Path | None:
    """`metric` of each finished job against every parameter that varies across the sweep; None if none varies."""
    finished = [row for row in rows if row.get(f"final_{metric}") is not None]
    keys = sorted({key for row in finished for key in row if key.startswith("params.")})
    swept = [key for key in keys if len({row.get(key) for row in finished}) > 1]
    if not swept:
        return None
    columns = min(3, len(swept))
    grid_rows = math.ceil(len(swept) / columns)
    figure, axes = _figure(grid_rows, columns, figsize=(4.5 * columns, 3.6 * grid_rows), squeeze=False)
    for axis in axes.flat[len(swept):]:
        axis.axis("off")
    for axis, key in zip(axes.flat, swept, strict=False):
        values = [row.get(key) for row in finished]
        scores = [row[f"final_{metric}"] for row in finished]
        numbers = _as_numbers(values)
        if numbers is not None:
            axis.scatter(numbers, scores)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
                axis.set_xscale("log")
        else:
            categories = sorted({str(v) for v in values})
            axis.scatter([categories.index(str(v)) for v in values], scores)
            axis.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        axis.set(xlabel=key.removeprefix("params."), ylabel=metric)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{metric} of {len(finished)} finished jobs against each swept parameter")
    return _save(figure, path)


def repeat_spread(path: Path, groups: Sequence[Any], metric: str) -> Path | None:
    """Mean final `metric` of each configuration (mnist_exp.reports.repeats.RepeatGroup) with one standard deviation
    as error bars, best first; None when no configuration has a complete run."""
    shown = [group for group in groups if group.mean(f"final_{metric}") is not None]
    if not shown:
        return None
    # One row per configuration, best on top: long labels read across, however many there are.
    figure, axis = _figure(figsize=(10, max(2.5, 1.2 + 0.45 * len(shown))))
    spreads = [group.scores[f"final_{metric}"] for group in shown]
    axis.errorbar([s.mean for s in spreads], range(len(shown)), xerr=[s.std or 0.0 for s in spreads],
                  fmt="o", capsize=5)
    axis.set_yticks(range(len(shown)), [f"{g.label} ({g.complete} seeds)" for g in shown], fontsize=8)
    axis.invert_yaxis()
    axis.set(xlabel=f"final {metric}", title=f"final {metric}: mean ± one standard deviation over seeds")
    axis.grid(alpha=0.3)
    return _save(figure, path)


def _as_numbers(values: Sequence[Any]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
