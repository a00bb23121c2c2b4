"""Any picture -> a 28x28 uint8 image laid out like the training data (white strokes on black, centred)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mnist_exp.config import PICTURE_LAYOUTS
from mnist_exp.errors import ExperimentError

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

    Pictures of more than MAX_PIXELS pixels are refused before they are decoded (a small PNG can claim
    20000x20000 pixels: a decompression bomb).
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings(), Image.open(path) as image:
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
            gray = np.asarray(image.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ExperimentError(f"{path}: not a readable image ({error})") from None
    if gray.size == 0:
        raise ExperimentError(f"{path}: the image is empty")
    return gray


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
