"""The ten-line Keras script mnist-exp has to beat: same model, optimizer, epochs, batch size and
validation split as `python -m mnist_exp data=fashion_mnist`, with no Hydra and no MLflow.

    python benchmarks/plain_keras.py [--epochs 5] [--batch-size 128]
"""

import argparse
import gzip
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras  # noqa: E402

FOLDER = "/usr/share/datasets/fashion-mnist"


def idx(name, offset):
    with gzip.open(f"{FOLDER}/{name}", "rb") as stream:
        return np.frombuffer(stream.read(), np.uint8, offset=offset)


parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--batch-size", type=int, default=128)
args = parser.parse_args()

x_train = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype("float32") / 255
y_train = idx("train-labels-idx1-ubyte.gz", 8)
x_test = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 784).astype("float32") / 255
y_test = idx("t10k-labels-idx1-ubyte.gz", 8)

keras.utils.set_random_seed(42)
model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.1, verbose=2)
print("test accuracy", model.evaluate(x_test, y_test, verbose=0)[1])
