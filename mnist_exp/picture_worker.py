"""A run's pictures drawn in a process of their own.

matplotlib holds the GIL for the second or so the three pictures take; drawn in a thread of the training
process, that second is added to the model's logging after the last epoch (and to every trial of a search).
In a worker process it runs on the other core. One worker serves every run of the process that starts it
(a search's trials): started while training runs, it has imported matplotlib by the time it is asked.

The worker runs in a session of its own, so a Ctrl-C in the terminal reaches the run, which decides what
happens, not the worker; it reads its requests from a pipe and exits when the pipe ends, which is when this
process closes it at exit or dies, even by SIGKILL. When the worker cannot be used (it failed to start, or
died), the pictures are drawn here as before.

    python -m mnist_exp.picture_worker      (started by `start()`; reads pickled requests on stdin)
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0
_FRAME = struct.Struct("!Q")  # each message: its pickled length, then the pickle

_lock = threading.Lock()  # one request at a time, and one worker per process
_worker: subprocess.Popen | None = None
_stop_registered = False


class WorkerUnavailable(Exception):
    """The worker could not be started, or ended before it answered."""


def start() -> None:
    """Start the worker unless it runs already; failures are left for `draw_run_plots` to find."""
    with _lock:
        _running_worker()


def pid() -> int | None:
    """The running worker's process id, if one runs."""
    with _lock:
        return _worker.pid if _worker is not None and _worker.poll() is None else None


def draw_run_plots(folder: Path, history: Mapping[str, Sequence[float]], images: np.ndarray, labels: np.ndarray,
                   predictions: np.ndarray, class_names: Sequence[str]) -> None:
    """mnist_exp.plots.write_run_plots into `folder`, by the worker, else here; raises what drawing raised."""
    request = {"folder": Path(folder), "history": {key: list(values) for key, values in history.items()},
               "images": images, "labels": labels, "predictions": predictions, "class_names": list(class_names)}
    with _lock:
        try:
            error = _ask(request)
        except WorkerUnavailable as reason:
            log.debug("drawing the pictures in this process: %s", reason)
            from mnist_exp.plots import write_run_plots

            write_run_plots(**request)
            return
    if error is not None:
        raise RuntimeError(error)


def stop() -> None:
    """End the worker: it sees its input end and exits."""
    global _worker
    with _lock:
        worker, _worker = _worker, None
    if worker is None:
        return
    for pipe in (worker.stdin, worker.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    try:
        worker.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def _running_worker() -> subprocess.Popen:
    global _worker, _stop_registered
    if _worker is not None and _worker.poll() is None:
        return _worker
    # This package's folder first: the worker imports the same mnist_exp whatever its working directory.
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    try:
        _worker = subprocess.Popen(
            [sys.executable, "-m", "mnist_exp.picture_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "PYTHONPATH": path},
        )
    except OSError as error:
        raise WorkerUnavailable(f"cannot start it: {error}") from None
    if not _stop_registered:
        atexit.register(stop)
        _stop_registered = True
    return _worker


def _ask(request: dict[str, Any]) -> str | None:
    worker = _running_worker()
    try:
        _write(worker.stdin, request)
        reply = _read(worker.stdout)
    except (OSError, ValueError) as error:
        reply, cause = None, error
    else:
        cause = None
    if reply is None:
        worker.kill()
        raise WorkerUnavailable(f"it ended ({cause or f'exit code {worker.wait()}'})")
    return reply["error"]


def _write(pipe: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_FRAME.pack(len(data)) + data)
    pipe.flush()


def _read(pipe: BinaryIO) -> Any | None:
    """The next message, or None at the end of the pipe."""
    header = pipe.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (length,) = _FRAME.unpack(header)
    data = pipe.read(length)
    return pickle.loads(data) if len(data) == length else None


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: draw each request's pictures, answer {"error": None or one line}, until the input ends."""
    from mnist_exp.plots import preload, write_run_plots

    preload()
    while (request := _read(requests)) is not None:
        try:
            write_run_plots(**request)
            error = None
        except Exception as failure:  # answered, and the next run's pictures still get drawn
            error = f"{type(failure).__name__}: {failure}"
        _write(replies, {"error": error})


def main() -> None:
    # Replies go to the pipe that was stdout; anything a library prints goes to stderr instead of into them.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
    replies.close()
    # Nothing is left to flush: skip the interpreter's teardown, which the process waiting at its exit would wait for.
    os._exit(0)


if __name__ == "__main__":
    main()
