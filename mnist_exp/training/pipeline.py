"""Batches for Keras from the loader's arrays, read in place by TensorFlow: one copy of the data per process."""

from __future__ import annotations

import math

from mnist_exp.data import Dataset, aligned
from mnist_exp.system.errors import ExperimentError


class InMemoryBatches:
    """tf.data pipelines that gather each batch from the loader's arrays, which TensorFlow reads in place.

    Given numpy arrays, fit() copies them into tensors first; a variable over the same memory
    (DLPack, no copy) keeps one copy of the data in the process, at the same speed. Keras takes
    tf.data input on every backend.
    """

    def __init__(self, dataset: Dataset, seed: int, shift: int = 0, one_hot: int | None = None):
        """`shift`: move each training image by up to this many pixels in each direction (a new draw per image and
        epoch; the uncovered border is black); validation and test images are never moved. `one_hot`: labels as
        one-hot rows of this many classes (what a smoothed loss takes), else class numbers."""
        import tensorflow as tf  # imported by Keras already, or quietly by import_keras for other backends

        self._side = math.isqrt(dataset.images.shape[1])
        if shift and self._side ** 2 != dataset.images.shape[1]:
            raise ExperimentError(f"data.augment={shift} shifts square images; these have {dataset.images.shape[1]} "
                                  "pixels")
        self._tf, self._seed, self._shift, self._classes = tf, seed, shift, one_hot
        self._val_examples, self._pool_size, self._test_size = (
            dataset.val_examples, len(dataset.labels), len(dataset.y_test)
        )
        self._pool = (_shared_variable(tf, dataset.images), _shared_variable(tf, dataset.labels))
        self._test = (_shared_variable(tf, dataset.x_test), _shared_variable(tf, dataset.y_test))

    def train(self, batch_size: int):
        return self._batches(self._pool, self._val_examples, self._pool_size, batch_size, shuffle=True,
                             shift=self._shift)

    def val(self, batch_size: int):
        return self._batches(self._pool, 0, self._val_examples, batch_size, shuffle=False)

    def test(self, batch_size: int):
        return self._batches(self._test, 0, self._test_size, batch_size, shuffle=False)

    def _batches(self, arrays, start: int, stop: int, batch_size: int, shuffle: bool, shift: int = 0):
        # Keras' own pipeline for arrays, over shared memory: a whole epoch's order in one op,
        # then a batch of row numbers per step, gathered in parallel.
        tf = self._tf
        images, labels = arrays
        full = (stop - start) // batch_size * batch_size
        # Plain Python around TensorFlow ops, no tensor-dependent branches: AutoGraph's rewrite of their source
        # (the first pipeline of a process) would cost more than the rest of building it.
        plain = tf.autograph.experimental.do_not_convert

        def epoch_order(epoch_seed):
            rows = tf.range(start, stop, dtype=tf.int64)
            if not shuffle:
                return rows
            return tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([epoch_seed, self._seed]))

        def in_batches(epoch_seed):
            rows = epoch_order(epoch_seed)
            batches = tf.data.Dataset.from_tensor_slices(tf.reshape(rows[:full], [-1, batch_size]))
            if full < stop - start:
                batches = batches.concatenate(tf.data.Dataset.from_tensors(rows[full:]))
            if not shift:
                return batches
            # Each batch's own seed for its shifts: the epoch's seed and the batch's number, moved past every
            # run seed (< 2**32), so that no batch's shifts share the epoch order's seed [epoch_seed, seed].
            return batches.enumerate().map(
                plain(lambda number, rows: (rows, tf.stack([epoch_seed, number + 2**32]))))

        def gather(rows, batch_seed=None):
            # read_value(): a dense read shares the buffer; gathering from the variable itself makes TF copy it.
            batch, classes = tf.gather(images.read_value(), rows), tf.gather(labels.read_value(), rows)
            return (shifted(batch, batch_seed) if shift else batch,
                    tf.one_hot(classes, self._classes) if self._classes else classes)

        def shifted(batch, batch_seed):
            count, side = tf.shape(batch)[0], self._side
            padded = tf.pad(tf.reshape(batch, [count, side, side]), [[0, 0], [shift, shift], [shift, shift]])
            # Each image's window into its padded copy: a random top-left corner, side x side pixels from there.
            corners = tf.random.stateless_uniform([2, count], seed=batch_seed, maxval=2 * shift + 1, dtype=tf.int32)
            window = tf.range(side)[tf.newaxis, :]
            picked = tf.gather(padded, corners[0][:, tf.newaxis] + window, axis=1, batch_dims=1)
            picked = tf.gather(picked, corners[1][:, tf.newaxis] + window, axis=2, batch_dims=1)
            return tf.reshape(picked, [count, side * side])

        # A new seed every epoch (every pass over this dataset), the same sequence in every process.
        epochs = tf.data.Dataset.random(seed=self._seed, rerandomize_each_iteration=True).take(1)
        pipeline = epochs.flat_map(plain(in_batches)).map(plain(gather), num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        # As Keras does: the default rewrites cost a pipeline serialisation per epoch and gain nothing here.
        options.experimental_optimization.apply_default_optimizations = False
        # flat_map hides the length; Keras runs a loop of known length faster than one that waits for the end.
        batches = -(-(stop - start) // batch_size)
        return pipeline.with_options(options).apply(tf.data.experimental.assert_cardinality(batches)).prefetch(
            tf.data.AUTOTUNE
        )


def _shared_variable(tf, array):
    """A variable over `array`'s memory; TensorFlow aborts the process on unaligned buffers, so align first."""
    return tf.Variable(tf.experimental.dlpack.from_dlpack(aligned(array).__dlpack__()), trainable=False)
