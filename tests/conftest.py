"""Shared fixtures: composed configs pointed at a temporary store, and tiny data files."""

from __future__ import annotations

import gzip
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with everything a run writes redirected into tmp_path."""

    def make(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=[f"runs_dir={tmp_path / 'runs'}", *overrides])

    return make


def write_idx(path: Path, array: np.ndarray, *, magic: bytes | None = None, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, gzipped unless told otherwise."""
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    content = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)
    return path


def learnable_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 uint8 images whose class k lights up row block k: a tiny MLP learns it in one epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 * label + 4: 2 * label + 6, 4:24] = 255
    return images, labels


@pytest.fixture
def idx_folder(tmp_path) -> Path:
    """A folder with the four standard gzipped IDX files: 300 train, 100 test images."""
    folder = tmp_path / "idx"
    folder.mkdir()
    x_train, y_train = learnable_digits(300, seed=1)
    x_test, y_test = learnable_digits(100, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    return folder


@pytest.fixture
def npz_file(tmp_path) -> Path:
    """A Keras-format mnist.npz: 400 train, 100 test learnable images."""
    x_train, y_train = learnable_digits(400, seed=3)
    x_test, y_test = learnable_digits(100, seed=4)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    """Poll `url` until it answers; fail with the server's output if it exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            output = server.stdout.read() if server.poll() is not None and server.stdout else ""
            pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{output}")
        time.sleep(0.5)


def signal_when(process: subprocess.Popen, ready: Callable[[], bool], signal_number: int, timeout: float,
                waiting_for: str) -> str:
    """Send `signal_number` once `ready()` holds; the process's stderr after it exits."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.5)
            if ready():
                break
        else:
            pytest.fail(f"{waiting_for} within {timeout:.0f} s")
        process.send_signal(signal_number)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    return stderr
