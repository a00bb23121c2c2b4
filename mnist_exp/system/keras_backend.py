"""Which backend Keras runs on, and importing Keras (and TensorFlow) without their start-up noise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from mnist_exp.system.errors import ExperimentError


def select_backend(backend: str) -> None:
    """Make `backend` the one Keras loads; Keras fixes its backend at import, once per process."""
    loaded = sys.modules.get("keras")
    if loaded is not None and loaded.backend.backend() != backend:
        raise ExperimentError(
            f"backend={backend}: Keras already runs on {loaded.backend.backend()} in this process; "
            "start a new process to switch"
        )
    os.environ["KERAS_BACKEND"] = backend
    _quiet_tensorflow()


def import_keras():
    """Keras on the selected backend (TensorFlow unless select_backend said otherwise), imported on first use."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _quiet_tensorflow()
    if "keras" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] < "2":
        import keras
        import tensorflow  # noqa: F401
    else:
        # TensorFlow >= 2.16 writes its start-up notices to fd 2 before honouring TF_CPP_MIN_LOG_LEVEL.
        with _native_stderr_discarded():
            import keras

            # On every backend: TensorFlow feeds the data (mnist_exp.training.pipeline).
            import tensorflow  # noqa: F401
    return keras


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) says nothing actionable on a CPU;
    # real failures still arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def _native_stderr_discarded() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
