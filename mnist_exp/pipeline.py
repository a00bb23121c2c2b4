"""Batches for Keras from the loader's arrays, read in place by TensorFlow: one copy of the data per process."""

from __future__ import annotations

from mnist_exp.data import Dataset, aligned


class InMemoryBatches:
    """tf.data pipelines that gather each batch from the loader's arrays, which TensorFlow reads in place.

    Given numpy arrays, fit() copies them into tensors first; a variable over the same memory
    (DLPack, no copy) keeps one copy of the data in the process, at the same speed. Keras takes
    tf.data input on every backend.
    """

    def __init__(self, dataset: Dataset, seed: int):
        import tensorflow as tf  # imported by Keras already, or quietly by import_keras for other backends

        self._tf, self._seed = tf, seed
        self._val_examples, self._pool_size, self._test_size = (
            dataset.val_examples, len(dataset.labels), len(dataset.y_test)
        )
        self._pool = (_shared_variable(tf, dataset.images), _shared_variable(tf, dataset.labels))
        self._test = (_shared_variable(tf, dataset.x_test), _shared_variable(tf, dataset.y_test))

    def train(self, batch_size: int):
        return self._batches(self._pool, self._val_examples, self._pool_size, batch_size, shuffle=True)

    def val(self, batch_size: int):
        return self._batches(self._pool, 0, self._val_examples, batch_size, shuffle=False)

    def test(self, batch_size: int):
        return self._batches(self._test, 0, self._test_size, batch_size, shuffle=False)

    def _batches(self, arrays, start: int, stop: int, batch_size: int, shuffle: bool):
        # Keras' own pipeline for arrays, over shared memory: a whole epoch's order in one op,
        # then a batch of row numbers per step, gathered in parallel.
        tf = self._tf
        images, labels = arrays
        full = (stop - start) // batch_size * batch_size

        def epoch_order(epoch_seed):
            rows = tf.range(start, stop, dtype=tf.int64)
            if not shuffle:
                return rows
            return tf.random.experimental.stateless_shuffle(rows, seed=tf.stack([epoch_seed, self._seed]))

        def in_batches(rows):
            batches = tf.data.Dataset.from_tensor_slices(tf.reshape(rows[:full], [-1, batch_size]))
            return batches.concatenate(tf.data.Dataset.from_tensors(rows[full:])) if full < stop - start else batches

        def gather(rows):
            # read_value(): a dense read shares the buffer; gathering from the variable itself makes TF copy it.
            return tf.gather(images.read_value(), rows), tf.gather(labels.read_value(), rows)

        # A new seed every epoch (every pass over this dataset), the same sequence in every process.
        epochs = tf.data.Dataset.random(seed=self._seed, rerandomize_each_iteration=True).take(1)
        # Plain Python around TensorFlow ops, no tensor-dependent branches: AutoGraph's rewrite of their source
        # (the first pipeline of a process) would cost more than the rest of building it.
        plain = tf.autograph.experimental.do_not_convert
        pipeline = epochs.map(plain(epoch_order)).flat_map(plain(in_batches)).map(
            plain(gather), num_parallel_calls=tf.data.AUTOTUNE)
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
