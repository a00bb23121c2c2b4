"""`python -m mnist_exp.predict IMAGE [IMAGE ...] (--run RUN_ID | --model models:/NAME@ALIAS)`.

Prints the predicted class and the top-3 probabilities of each picture, whatever its size or colours.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mnist_exp.config import store_for_reading
from mnist_exp.errors import ExperimentError


def predict(model, images: np.ndarray, class_names: Sequence[str], top: int = 3) -> list[list[tuple[str, float]]]:
    """The `top` (class name, probability) pairs for each row of 784 uint8 pixels, most likely first."""
    probabilities = np.asarray(model.predict(images, verbose=0))
    order = np.argsort(-probabilities, axis=1)[:, :top]
    return [[(class_names[k], float(row[k])) for k in ranks] for row, ranks in zip(probabilities, order, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="PNG, JPEG or any image Pillow reads")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_ID", help="use the model this MLflow run logged")
    source.add_argument("--model", metavar="URI", help="a model URI, e.g. models:/mnist-mlp@champion")
    parser.add_argument("--tracking-uri", default=store_for_reading(), help="the MLflow store (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        from mnist_exp.data import CLASS_NAMES
        from mnist_exp.images import read_image, to_model_input

        pictures = [read_image(path) for path in args.images]  # unreadable files fail before the slow imports
        from mnist_exp.train import import_keras

        import_keras()
        from mnist_exp.tracking import load_logged_model

        model, dataset_name = load_logged_model(args.tracking_uri, run_id=args.run, model_uri=args.model)
        class_names = CLASS_NAMES.get(dataset_name, CLASS_NAMES["mnist"])
        batch = np.stack([to_model_input(p, fill_frame=dataset_name == "fashion_mnist") for p in pictures])
        results = predict(model, batch, class_names)
    except ExperimentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path, top in zip(args.images, results, strict=True):
        (best, _), *_ = top
        ranked = ", ".join(f"{name} {p:.3f}" for name, p in top)
        print(f"{path}: {best}  (top 3: {ranked})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
