"""Pictures people draw or photograph, turned into inputs laid out like MNIST."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnist_exp.errors import ExperimentError
from mnist_exp.images import DIGIT_BOX, read_image, to_model_input


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
