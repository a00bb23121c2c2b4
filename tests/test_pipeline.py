"""The batches Keras trains on: every row once per epoch, reshuffled, read from the loader's arrays in place."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mnist_exp import data
from mnist_exp.system.keras_backend import import_keras
from mnist_exp.training.pipeline import InMemoryBatches
from tests.conftest import data_cfg

import_keras()


@pytest.fixture
def dataset(idx_folder, tmp_path):
    # Each image carries its row number in its first two pixels, so each batch row can be traced back.
    loaded = data.load_dataset(data_cfg(path=idx_folder), seed=0, cache_dir=tmp_path / "cache")
    for images in (loaded.images, loaded.x_test):
        images[:, 0], images[:, 1] = np.divmod(np.arange(len(images)), 256)
    return loaded


def epoch_rows(batches) -> list[int]:
    return [int(high) * 256 + int(low) for images, _ in batches for high, low in images[:, :2].numpy()]


def test_each_epoch_sees_every_training_row_once_in_a_new_order(dataset):
    train = InMemoryBatches(dataset, seed=3).train(32)
    first, second = epoch_rows(train), epoch_rows(train)
    expected = list(range(dataset.val_examples, len(dataset.labels)))  # 30..299
    assert sorted(first) == sorted(second) == expected
    assert first != second and first != expected
    assert first == epoch_rows(InMemoryBatches(dataset, seed=3).train(32)), "the same seed, the same order"
    assert len(train) == -(-len(expected) // 32), "Keras needs the number of batches"


def test_validation_and_test_batches_are_in_order_with_their_labels(dataset):
    batches = InMemoryBatches(dataset, seed=3)
    assert epoch_rows(batches.val(7)) == list(range(dataset.val_examples))
    assert epoch_rows(batches.test(1024)) == list(range(len(dataset.y_test)))
    labels = np.concatenate([y.numpy() for _, y in batches.test(64)])
    assert np.array_equal(labels, dataset.y_test)


def test_batches_read_the_loaders_arrays_in_place(dataset):
    """No copy of the data: a change to the numpy array shows up in the next epoch's batches."""
    train = InMemoryBatches(dataset, seed=3).train(32)
    epoch_rows(train)  # a copying pipeline would have taken its copy by now
    dataset.images[:, 2] = 201
    assert {int(v) for images, _ in train for v in images[:, 2].numpy()} == {201}


def block_offsets(batches) -> list[tuple[int, int]]:
    """Where each image's 3x3 block (drawn at rows and columns 13-15) ended up, as (down, right)."""
    offsets = []
    for images, _ in batches:
        for image in images.numpy().reshape(-1, 28, 28):
            rows, columns = np.nonzero(image)
            assert len(rows) == 9 and image.sum() == 9 * 255, "moved whole, nothing lost or added"
            offsets.append((int(rows.min()) - 13, int(columns.min()) - 13))
    return offsets


def test_augment_moves_each_training_image_by_at_most_shift_pixels_anew_each_epoch(dataset):
    for images in (dataset.images, dataset.x_test):
        images[:] = 0
        images.reshape(-1, 28, 28)[:, 13:16, 13:16] = 255
    batches = InMemoryBatches(dataset, seed=3, shift=2)
    train = batches.train(32)  # fit() iterates one dataset once per epoch
    first, second = block_offsets(train), block_offsets(train)
    assert all(-2 <= down <= 2 and -2 <= right <= 2 for down, right in first + second)
    assert len(set(first)) > 1 and first != second, "each image its own draw, a new one each epoch"
    assert first == block_offsets(InMemoryBatches(dataset, seed=3, shift=2).train(32)), "the same seed, the same shifts"
    assert set(block_offsets(batches.val(32)) + block_offsets(batches.test(32))) == {(0, 0)}, "never moved"
    assert set(block_offsets(InMemoryBatches(dataset, seed=3).train(32))) == {(0, 0)}, "off by default"


def test_augment_needs_square_images(dataset):
    from mnist_exp.system.errors import ExperimentError

    dataset = dataclasses.replace(dataset, images=np.ascontiguousarray(dataset.images[:, :780]))
    with pytest.raises(ExperimentError, match="data.augment=1 shifts square images; these have 780 pixels"):
        InMemoryBatches(dataset, seed=3, shift=1)


def test_one_hot_labels_for_a_smoothed_loss(dataset):
    batches = InMemoryBatches(dataset, seed=3, one_hot=10)
    for split in (batches.train(32), batches.val(32), batches.test(32)):
        images, labels = next(iter(split))
        assert labels.shape == (len(images), 10) and np.array_equal(labels.numpy().sum(axis=1), np.ones(len(images)))
    labels = np.concatenate([y.numpy() for _, y in batches.test(64)])
    assert np.array_equal(labels.argmax(axis=1), dataset.y_test)
