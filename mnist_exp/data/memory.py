"""Arrays TensorFlow can read in place: C-contiguous, writable and aligned to its kernels' liking."""

from __future__ import annotations

import numpy as np

# TensorFlow uses memory in place only at this alignment (its kernels check it); numpy gives 16.
BUFFER_ALIGNMENT = 64


def aligned(array: np.ndarray) -> np.ndarray:
    """`array` itself when it is writable, C-contiguous and aligned for TensorFlow; else such a copy."""
    if array.flags.c_contiguous and array.flags.writeable and array.ctypes.data % BUFFER_ALIGNMENT == 0:
        return array
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + BUFFER_ALIGNMENT, dtype=np.uint8)
    start = -buffer.ctypes.data % BUFFER_ALIGNMENT
    return buffer[start:start + nbytes].view(dtype).reshape(shape)


def flatten(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> uint8 (n, 784), without copying."""
    return images.reshape(len(images), -1)
