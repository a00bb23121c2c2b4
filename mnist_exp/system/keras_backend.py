"""Which backend Keras runs on, and importing Keras (and TensorFlow) without their start-up noise."""

from __future__ import annotations

import os
import sys

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
    from mnist_exp.system.workarounds import tensorflow_start_up_notices_discarded

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _quiet_tensorflow()
    with tensorflow_start_up_notices_discarded():
        import keras

        # On every backend: TensorFlow feeds the data (mnist_exp.training.pipeline).
        import tensorflow  # noqa: F401
    return keras


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) says nothing actionable on a CPU;
    # real failures still arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

