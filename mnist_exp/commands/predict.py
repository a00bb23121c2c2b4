"""`python -m mnist_exp.predict IMAGE [IMAGE ...] (--run RUN_ID | --model models:/NAME@ALIAS)`.

Prints the predicted class and the top-3 probabilities of each picture, whatever its size or colours.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mnist_exp.system.errors import ExperimentError, report
from mnist_exp.tracking.store import reading_uri

# What runs recorded before `data.class_names` and `data.picture_layout` were logged were trained on.
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def predict(model, images: np.ndarray, class_names: Sequence[str], top: int = 3) -> list[list[tuple[str, float]]]:
    """The `top` (class name, probability) pairs for each row of 784 uint8 pixels, most likely first."""
    probabilities = np.asarray(model.predict(images, verbose=0))
    if probabilities.shape[1] != len(class_names):
        raise ExperimentError(
            f"the model has {probabilities.shape[1]} outputs but its run names {len(class_names)} classes"
        )
    order = np.argsort(-probabilities, axis=1)[:, :top]
    return [[(class_names[k], float(row[k])) for k in ranks] for row, ranks in zip(probabilities, order, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG, JPEG or any image Pillow reads")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="use the model this MLflow run logged")
    source.add_argument("--model", metavar="URI", help="a model URI, e.g. models:/mnist-mlp@champion")
    parser.add_argument("--tracking-uri", default=reading_uri(), help="the MLflow store (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        from mnist_exp.data.images import read_image, to_model_input

        pictures = [read_image(path) for path in args.images]  # unreadable files fail before the slow imports
        from mnist_exp.system.keras_backend import import_keras

        import_keras()
        from mnist_exp.tracking.logged_models import load_logged_model

        model, params = load_logged_model(args.tracking_uri, run_id=args.run, model_uri=args.model)
        class_names, layout = trained_on(params)
        batch = np.stack([to_model_input(p, layout) for p in pictures])
        for path, pixels in zip(args.images, batch, strict=True):
            if not pixels.any():
                print(f"warning: {path}: no ink found (a blank picture); its class below is a guess", file=sys.stderr)
        results = predict(model, batch, class_names)
    except ExperimentError as error:
        return report(str(error))
    for path, top in zip(args.images, results, strict=True):
        (best, _), *_ = top
        ranked = ", ".join(f"{name} {p:.3f}" for name, p in top)
        print(f"{path}: {best}  (top 3: {ranked})")
    return 0


def trained_on(params: Mapping[str, str]) -> tuple[tuple[str, ...], str]:
    """(class names, picture layout) of the data a run trained on, from the run's logged params.

    Runs recorded before `data.class_names` and `data.picture_layout` existed have only `dataset.name`:
    Fashion-MNIST's names and the `fill` layout for fashion_mnist, digits and `digit` for any other.
    """
    if params.get("dataset.name") == "fashion_mnist":
        old_names, old_layout = FASHION_CLASSES, "fill"
    else:
        old_names, old_layout = DIGITS, "digit"
    try:
        names = tuple(json.loads(params["data.class_names"])) if "data.class_names" in params else old_names
    except json.JSONDecodeError:
        raise ExperimentError(f"the run's data.class_names is not a JSON list: {params['data.class_names']}") from None
    return names, params.get("data.picture_layout", old_layout)

