"""What a run trains on: the dataset's own loader, the offline fallback, and the validation split.

`load_dataset` calls the function the dataset's `data.loader` names (the built-in ones are in
mnist_exp.data.sources), trains on mnist_sample instead when MNIST cannot be downloaded and
`data.allow_fallback` allows it, and holds out a seeded validation split in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_exp.data.formats import RawData
from mnist_exp.data.memory import aligned, flatten
from mnist_exp.data.sources import Loader, OfflineError, load_mnist_sample
from mnist_exp.system.errors import ExperimentError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """What a run trains on: uint8 pixels (0-255) flattened to 784, and integer labels.

    Pixels stay uint8 and the model scales them to [0, 1] in its first layer: a quarter of the
    memory of float32 arrays. The validation and training splits are views of one array
    (`images`, validation rows first), and every array is aligned so TensorFlow can read it in
    place: the process holds one copy of the data.
    """

    name: str
    source: str
    digest: str
    class_names: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray
    val_examples: int
    x_test: np.ndarray
    y_test: np.ndarray
    fallback_reason: str | None = None
    split_digests: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def x_train(self) -> np.ndarray:
        return self.images[self.val_examples:]

    @property
    def y_train(self) -> np.ndarray:
        return self.labels[self.val_examples:]

    @property
    def x_val(self) -> np.ndarray:
        return self.images[: self.val_examples]

    @property
    def y_val(self) -> np.ndarray:
        return self.labels[: self.val_examples]

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.labels) - self.val_examples, "val": self.val_examples, "test": len(self.y_test)}


def load_dataset(data_cfg: Mapping[str, Any], *, seed: int, cache_dir: Path | None = None) -> Dataset:
    """Load the dataset the (validated) `data` config section describes; hold out a validation split by `seed`."""
    name, class_names = data_cfg["name"], tuple(data_cfg["class_names"])
    path = _existing_path(data_cfg["path"])
    cache = cache_dir if data_cfg["cache"] else None
    fallback_reason = None
    try:
        raw = _load_raw(data_cfg["loader"], path, cache)
    except OfflineError as offline:
        if not data_cfg["allow_fallback"]:
            raise ExperimentError(f"{offline} (data.allow_fallback=false)") from None
        fallback_reason = f"{offline}; trained on mnist_sample instead"
        log.warning("%s: falling back to mnist_sample (5,000 MNIST digits)", offline)
        name = "mnist_sample"
        raw = load_mnist_sample(None, cache)
    _check_labels(raw, class_names)
    digest = raw.digest()  # before the split reorders the training rows
    images, labels = aligned(flatten(raw.x_train)), aligned(raw.y_train)
    val_examples = hold_out_validation(images, labels, data_cfg["val_fraction"], seed)
    return Dataset(
        name=name,
        source=raw.source,
        digest=digest,
        # Each split is fixed by the source digest, the seed and the fraction, so they name it too.
        split_digests={
            split: hashlib.sha256(f"{digest}:{split}:{seed}:{data_cfg['val_fraction']}".encode()).hexdigest()[:16]
            for split in ("train", "validation", "test")
        },
        class_names=class_names,
        images=images,
        labels=labels,
        val_examples=val_examples,
        x_test=aligned(flatten(raw.x_test)),
        y_test=aligned(raw.y_test),
        fallback_reason=fallback_reason,
    )


def with_training_subset(dataset: Dataset, examples: int, seed: int) -> Dataset:
    """The dataset with only `examples` of its training rows, drawn by `seed` (a file's rows may be sorted
    by class); validation and test stay whole. A copy, but a small one: the subset is for a quick check."""
    available = dataset.sizes["train"]
    if examples > available:
        raise ExperimentError(
            f"train_subset={examples} is more than the {available} training examples of {dataset.name}"
        )
    chosen = np.sort(np.random.default_rng(seed).choice(available, size=examples, replace=False))
    rows = np.concatenate([np.arange(dataset.val_examples), dataset.val_examples + chosen])
    train_digest = hashlib.sha256(f"{dataset.split_digests.get('train', dataset.digest)}:subset:{examples}".encode())
    return dataclasses.replace(
        dataset,
        images=aligned(dataset.images[rows]),
        labels=aligned(dataset.labels[rows]),
        split_digests={**dataset.split_digests, "train": train_digest.hexdigest()[:16]},
    )


def hold_out_validation(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> int:
    """Move a seeded random `fraction` of the rows to the front, in place; return how many.

    The same seed always holds out the same examples. Only the rows that must change sides move,
    so the split costs a tenth of the data in memory, not a copy of it.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    n_val = max(1, round(len(labels) * fraction))
    if n_val >= len(labels):
        raise ExperimentError(
            f"data.val_fraction={fraction} leaves no training examples out of {len(labels)}"
        )
    held_out, kept = order[:n_val], order[n_val:]
    # Held-out rows outside the front swap places with kept rows inside it; there are as many of each.
    incoming, outgoing = np.sort(held_out[held_out >= n_val]), np.sort(kept[kept < n_val])
    for array in (images, labels):
        moving = array[incoming]
        array[incoming] = array[outgoing]
        array[outgoing] = moving
    return n_val


def resolve_loader(spec: str) -> Loader:
    """The function `data.loader` names as `module:function`, imported."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ExperimentError(f"data.loader={spec} cannot be imported: {error}") from None
    loader = getattr(module, function_name, None)
    if not callable(loader):
        raise ExperimentError(f"data.loader={spec} is invalid: {module_name} has no function {function_name}")
    try:
        inspect.signature(loader).bind(None, None)
    except TypeError:
        raise ExperimentError(f"data.loader={spec} is invalid: a loader takes (path, cache_dir), "
                              f"{function_name} takes {_parameters(loader)}") from None
    except ValueError:  # a builtin without a signature to inspect: its call below says whether it fits
        pass
    return loader


def _parameters(function) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "other arguments"


def _existing_path(path: str | None) -> Path | None:
    if path is None:
        return None
    location = Path(path).expanduser()
    try:
        if not location.exists():
            raise ExperimentError(f"data.path={path} does not exist")
        regular = location.is_file() or location.is_dir()
        readable = os.access(location, os.R_OK | (os.X_OK if location.is_dir() else 0))
    except OSError as error:  # a name too long for the file system, a folder on the way we may not enter
        raise ExperimentError(f"data.path={path} cannot be used: {error.strerror or error}") from None
    if not regular:
        # A FIFO or a device would block the run forever, or stream without end.
        raise ExperimentError(f"data.path={path} is neither a regular file nor a folder")
    if not readable:
        raise ExperimentError(f"data.path={path} cannot be read (permission denied)")
    return location


def _load_raw(spec: str, path: Path | None, cache_dir: Path | None) -> RawData:
    raw = resolve_loader(spec)(path, cache_dir)
    if not isinstance(raw, RawData):
        raise ExperimentError(f"data.loader={spec} returned {type(raw).__name__}, not mnist_exp.data.RawData")
    return raw


def _check_labels(raw: RawData, class_names: tuple[str, ...]) -> None:
    """Every label must name a class: a dataset's YAML and its loader can disagree."""
    highest = max((int(labels.max()) for labels in (raw.y_train, raw.y_test) if labels.size), default=-1)
    if highest >= len(class_names):
        raise ExperimentError(
            f"data.class_names has {len(class_names)} names but {raw.source} has label {highest}"
        )
    present = np.unique(raw.y_train)
    if len(present) == 1:
        log.warning("%s: every training label is %s (%s): the model can only learn to answer that",
                    raw.source, present[0], class_names[present[0]])
    unseen = np.setdiff1d(np.unique(raw.y_test), present)
    if unseen.size:
        names = ", ".join(f"{label} ({class_names[label]})" for label in unseen[:10])
        log.warning("%s: the test split has classes the training split lacks, %s: the model cannot learn them, "
                    "and test accuracy counts every such image as wrong", raw.source, names)
