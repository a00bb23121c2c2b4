"""Any picture -> a 28x28 uint8 image laid out like the training data (white strokes on black, centred)."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mnist_exp.config import PICTURE_LAYOUTS
from mnist_exp.system.errors import ExperimentError

SIDE = 28
# The `digit` layout: MNIST digits fit a 20x20 box centred by their centre of mass in the 28x28 frame.
# The `fill` layout: Fashion-MNIST items fill the frame.
DIGIT_BOX = 20
# Pixels darker than this (after inverting a light background) count as background when cropping.
INK_THRESHOLD = 30
# Far more than any photo of a digit needs; a picture is decoded whole before it is scaled down.
MAX_PIXELS = 50_000_000


def read_image(path: Path) -> np.ndarray:
    """The file as a 2-D uint8 grayscale array; transparent pixels become white, like paper.

    Only a regular file is opened: a FIFO would block the command for ever, a device never end. Pictures of
    more than MAX_PIXELS pixels are refused before they are decoded (a small PNG can claim 20000x20000
    pixels: a decompression bomb). 16-bit and 32-bit pictures keep their contrast: see _gray.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with _regular_file(path) as stream, warnings.catch_warnings(), Image.open(stream) as image:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if image.width * image.height > MAX_PIXELS:
                raise ExperimentError(
                    f"{path}: {image.width}x{image.height} pixels, more than the {MAX_PIXELS:,} a picture may have"
                )
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(paper, rgba)
            gray = _gray(image, path)
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such file") from None
    except UnidentifiedImageError:  # its own words name the open file, not the path
        raise ExperimentError(f"{path}: not a readable image (no image format Pillow reads)") from None
    except (OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ExperimentError(f"{path}: not a readable image ({error})") from None
    if gray.size == 0:
        raise ExperimentError(f"{path}: the image is empty")
    return gray


@contextlib.contextmanager
def _regular_file(path: Path) -> Iterator[BinaryIO]:
    """`path` opened for reading if it is a regular file, else one ExperimentError naming what it is.

    Checked before anything is opened (opening a device may act on it), then opened with O_NONBLOCK, so
    that a path swapped for a FIFO after the check cannot block the open either, and checked again on the
    open file itself (fstat): the file it will read.
    """
    _check_regular(path, os.stat(path).st_mode)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as stream:
        _check_regular(path, os.fstat(descriptor).st_mode)
        os.set_blocking(descriptor, True)
        yield stream


# What a path that is no regular file is, for the error line.
FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "no regular file")
        raise ExperimentError(f"{path}: {kind}, not a regular file; only picture files are read")


def _gray(image, path: Path) -> np.ndarray:
    """The picture's gray levels as uint8 0-255, whatever its bit depth.

    Pillow's own conversion to `L` clips anything above 255: a 16-bit picture (`I;16`, up to 65535) turns
    almost all white, a float picture in [0, 1] (`F`) all black. Here 16-bit levels are divided by 257
    (65535 -> 255); 32-bit integers (`I`, as some readers give 16-bit files) by the largest value their
    range implies (255, 65535 or 2**31 - 1); floats follow the training data's rule (data.formats:
    taken as [0, 1] when the largest pixel is at most 1, else as [0, 255]).
    """
    if image.width * image.height == 0:
        return np.zeros((image.height, image.width), np.uint8)
    if image.mode.startswith("I;16"):
        return np.rint(np.asarray(image, dtype=np.float64) / 257).astype(np.uint8)
    if image.mode == "I":
        levels = np.clip(np.asarray(image, dtype=np.float64), 0, None)
        high = float(levels.max())
        top = 255 if high <= 255 else 65535 if high <= 65535 else 2**31 - 1
        return np.rint(levels * (255 / top)).astype(np.uint8)
    if image.mode == "F":
        levels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(levels).all():
            raise ExperimentError(f"{path}: the picture has NaN or infinite pixel values")
        low, high = float(levels.min()), float(levels.max())
        if low < 0 or high > 255:
            raise ExperimentError(f"{path}: float pixels from {low:g} to {high:g}; expected [0, 1] or [0, 255]")
        return np.rint(levels * (255.0 if high <= 1.0 else 1.0)).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def to_model_input(gray: np.ndarray, layout: str = "digit") -> np.ndarray:
    """784 uint8 pixels: light backgrounds inverted, the object cropped, scaled and centred like the training data.

    `layout` is the dataset's `picture_layout`: `digit` fits the object to a 20x20 box centred by its
    centre of mass (MNIST), `fill` scales it to the whole 28x28 frame (Fashion-MNIST).
    """
    from PIL import Image

    if layout not in PICTURE_LAYOUTS:
        raise ExperimentError(
            f"data.picture_layout={layout!r} is invalid: expected one of {', '.join(PICTURE_LAYOUTS)}"
        )
    fill_frame = layout == "fill"
    pixels = gray.astype(np.float32)
    if _border(pixels).mean() > 127:  # dark ink on light paper: the training data is the other way round
        pixels = 255 - pixels
    pixels -= np.median(_border(pixels))  # lift a grey background to black
    pixels = np.clip(pixels, 0, 255)
    ink = np.argwhere(pixels > INK_THRESHOLD)
    if len(ink) == 0:
        return np.zeros(SIDE * SIDE, dtype=np.uint8)
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    crop = pixels[top:bottom, left:right]
    box = SIDE if fill_frame else DIGIT_BOX
    scale = box / max(crop.shape)
    height, width = (max(1, round(n * scale)) for n in crop.shape)
    resized = np.asarray(
        Image.fromarray(crop.astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS), dtype=np.float32
    )
    frame = np.zeros((SIDE, SIDE), dtype=np.float32)
    if fill_frame:
        row, column = (SIDE - height) // 2, (SIDE - width) // 2
    else:
        # Put the centre of mass at the frame's centre, as MNIST was made.
        mass = resized.sum()
        rows, columns = np.indices(resized.shape)
        centre_row = (rows * resized).sum() / mass if mass else height / 2
        centre_column = (columns * resized).sum() / mass if mass else width / 2
        row = int(np.clip(round(SIDE / 2 - centre_row), 0, SIDE - height))
        column = int(np.clip(round(SIDE / 2 - centre_column), 0, SIDE - width))
    frame[row:row + height, column:column + width] = resized
    return np.clip(frame, 0, 255).astype(np.uint8).reshape(-1)


def _border(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
