"""Pictures people draw or photograph, turned into inputs laid out like MNIST."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_exp.data.images import DIGIT_BOX, read_image, to_model_input
from mnist_exp.system.errors import ExperimentError


def drawn_seven(path, size=(300, 200), ink=(20, 20, 120), paper=(250, 248, 240), mode="RGB"):
    """A dark-blue '7' on cream paper, off-centre in a large landscape picture."""
    image = Image.new(mode, size, paper if mode == "RGB" else (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.line([(40, 30), (120, 30), (70, 170)], fill=ink if mode == "RGB" else (*ink, 255), width=14)
    image.save(path)
    return path


def ink_box(pixels):
    rows, columns = np.nonzero(pixels.reshape(28, 28) > 30)
    return rows.min(), rows.max(), columns.min(), columns.max()


def centre_of_mass(pixels):
    image = pixels.reshape(28, 28).astype(float)
    rows, columns = np.indices(image.shape)
    return (rows * image).sum() / image.sum(), (columns * image).sum() / image.sum()


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_dark_ink_on_light_paper_becomes_a_centred_white_digit(tmp_path, mode):
    path = drawn_seven(tmp_path / "seven.png", mode=mode)
    pixels = to_model_input(read_image(path))
    assert pixels.shape == (784,) and pixels.dtype == np.uint8
    frame = pixels.reshape(28, 28)
    assert frame[0].max() == frame[-1].max() == frame[:, 0].max() == frame[:, -1].max() == 0, "black border"
    top, bottom, left, right = ink_box(pixels)
    assert max(bottom - top, right - left) + 1 <= DIGIT_BOX + 1
    row, column = centre_of_mass(pixels)
    assert abs(row - 14) <= 1.5 and abs(column - 14) <= 1.5
    assert pixels.max() > 200, "strokes are bright"


def test_an_mnist_style_image_is_not_inverted(tmp_path):
    frame = np.zeros((28, 28), np.uint8)
    frame[6:22, 12:16] = 255  # a '1', white on black
    Image.fromarray(frame).save(tmp_path / "one.png")
    pixels = to_model_input(read_image(tmp_path / "one.png")).reshape(28, 28)
    assert pixels[:, :4].max() == 0 and pixels[10:18, 12:16].mean() > 200


def test_fashion_items_fill_the_frame(tmp_path):
    path = drawn_seven(tmp_path / "item.jpg")
    top, bottom, left, right = ink_box(to_model_input(read_image(path), "fill"))
    assert max(bottom - top, right - left) + 1 >= 27


def test_a_blank_picture_gives_a_blank_input(tmp_path):
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    assert to_model_input(read_image(tmp_path / "blank.png")).max() == 0


def test_unreadable_and_missing_files_are_one_clear_error(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ExperimentError, match=r"notes.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ExperimentError, match=r"gone.png: no such file"):
        read_image(tmp_path / "gone.png")


def test_an_unknown_layout_is_one_clear_error():
    with pytest.raises(ExperimentError, match=r"^data.picture_layout='centred' is invalid: expected one of digit"):
        to_model_input(np.zeros((28, 28), np.uint8), "centred")


def gray_seven(path):
    """The drawn seven as 8-bit grayscale levels (RGB paper and ink made gray by Pillow)."""
    return np.asarray(Image.open(drawn_seven(path)).convert("L"))


def test_16_bit_and_32_bit_pictures_keep_their_contrast(tmp_path):
    """Pillow's conversion to 8 bits clips levels above 255: a 16-bit picture turned almost all white."""
    levels = gray_seven(tmp_path / "seven.png")
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "seven16.png")  # a 16-bit PNG (I;16)
    Image.fromarray(levels.astype(np.int32) * 257).save(tmp_path / "seven32.tiff")  # 32-bit integers (I)
    for name in ("seven16.png", "seven32.tiff"):
        assert np.array_equal(read_image(tmp_path / name), levels), name
        assert np.array_equal(to_model_input(read_image(tmp_path / name)), to_model_input(levels)), name


def test_float_pictures_are_scaled_as_the_training_data_is(tmp_path):
    """A float TIFF in [0, 1] was once all black ("blank"); floats follow data.formats' rule."""
    from mnist_exp.data.formats import check_arrays

    levels = gray_seven(tmp_path / "seven.png")
    for name, scale in (("unit.tiff", 1 / 255), ("bytes.tiff", 1.0)):
        Image.fromarray((levels * scale).astype(np.float32)).save(tmp_path / name)  # mode F
        assert np.array_equal(read_image(tmp_path / name), levels), name
    small = (np.arange(28 * 28, dtype=np.float32).reshape(28, 28) / (28 * 28 - 1))  # [0, 1], as one MNIST image
    Image.fromarray(small).save(tmp_path / "small.tiff")
    trained = check_arrays("t", small[None], np.array([1]), small[None], np.array([1])).x_train[0]
    assert np.array_equal(read_image(tmp_path / "small.tiff"), trained)


@pytest.mark.parametrize(("values", "message"), [
    ([0.5, np.nan], "NaN or infinite pixel values"),
    ([-1.0, 0.5], "float pixels from -1 to 0.5; expected"),
    ([0.0, 300.0], "float pixels from 0 to 300; expected"),
])
def test_float_pictures_out_of_range_are_one_clear_error(tmp_path, values, message):
    Image.fromarray(np.resize(np.asarray(values, np.float32), (8, 8))).save(tmp_path / "odd.tiff")
    with pytest.raises(ExperimentError, match=rf"odd.tiff: .*{re.escape(message)}"):
        read_image(tmp_path / "odd.tiff")


def test_only_regular_files_are_opened(tmp_path):
    """A FIFO once blocked the command for ever (open() waits for a writer); a folder or a device is no picture."""
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | np.ndarray] = []

    def read() -> None:
        try:
            outcome.append(read_image(fifo))
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=60)
    if reader.is_alive():  # blocked in open(): a writer releases it, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join()
        pytest.fail("reading a FIFO blocked")
    (error,) = outcome
    assert isinstance(error, ExperimentError), error
    assert str(error) == f"{fifo}: a FIFO, not a regular file; only picture files are read"
    for path, kind in ((tmp_path, "a folder"), (Path(os.devnull), "a character device")):
        with pytest.raises(ExperimentError, match=rf"^{re.escape(str(path))}: {kind}, not a regular file"):
            read_image(path)
