"""A bare Keras script tuned exactly like mnist-exp's default run, with nothing else: no Hydra, no MLflow,
no pictures, no model saving. Against `python -m mnist_exp data=fashion_mnist` it isolates the
framework's own cost; against benchmarks/plain_keras.py (the seed script) it shows what the tuning gains.

Tuned as the product is: uint8 pixels scaled inside the model, a tf.data pipeline over the arrays that
shuffles each epoch, steps_per_execution=32, jit_compile="auto", deterministic TensorFlow ops, a 10%
validation split drawn with the seed, evaluation batches of 1024.

    python benchmarks/tuned_keras.py [--epochs 5] [--batch-size 128]
"""

import argparse
import gzip
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

FOLDER = "/usr/share/datasets/fashion-mnist"
SEED = 42


def idx(name, offset):
    with gzip.open(f"{FOLDER}/{name}", "rb") as stream:
        return np.frombuffer(stream.read(), np.uint8, offset=offset)


def batches(x, y, batch_size, shuffle):
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        data = data.shuffle(len(x), seed=SEED, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()

images = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 784)
labels = idx("train-labels-idx1-ubyte.gz", 8)
x_test = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784)
y_test = idx("t10k-labels-idx1-ubyte.gz", 8)
order = np.random.default_rng(SEED).permutation(len(images))
val_rows, train_rows = order[: len(images) // 10], order[len(images) // 10:]

keras.utils.set_random_seed(SEED)
tf.config.experimental.enable_op_determinism()
model = keras.Sequential([keras.Input((784,), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                          keras.layers.Dense(512, activation="relu"), keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
              jit_compile="auto", steps_per_execution=32)
model.fit(batches(images[train_rows], labels[train_rows], args.batch_size, shuffle=True), epochs=args.epochs,
          validation_data=batches(images[val_rows], labels[val_rows], args.batch_size, shuffle=False), verbose=2)
print("test accuracy", model.evaluate(batches(x_test, y_test, 1024, shuffle=False), verbose=0)[1])
