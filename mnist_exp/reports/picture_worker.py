"""A run's pictures drawn in a process of their own.

matplotlib holds the GIL while it draws; in a thread of the training process, that time is added to the
model's logging after the last epoch (and to every trial of a search). In a worker process it runs on the
other core. One worker serves every run of the process that starts it (a search's trials): started while
training runs, it has imported matplotlib by the time it is asked.

The worker runs in a session of its own, so a Ctrl-C in the terminal reaches the run, which decides what
happens, not the worker; it reads its requests from a pipe and exits when the pipe ends, which is when this
process closes it at exit or dies, even by SIGKILL. When the worker cannot be used (it failed to start, died,
or did not answer in time), it is killed and the pictures are drawn here as before.

The worker is started by `start()` and reads pickled requests on its stdin.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)
# Drawing takes a fraction of this; a worker that has not answered by then is treated as gone.
ANSWER_TIMEOUT_S = 60.0
_FRAME = struct.Struct("!Q")  # each message: its pickled length, then the pickle
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# The worker imports this very mnist_exp package, from its folder (argv[1]), whatever the working directory or
# install holds, without putting that folder's parent (site-packages, for an installed wheel) first on sys.path.
_BOOTSTRAP = """
import importlib.util, sys
folder = sys.argv[1]
spec = importlib.util.spec_from_file_location("mnist_exp", folder + "/__init__.py", submodule_search_locations=[folder])
package = importlib.util.module_from_spec(spec)
sys.modules["mnist_exp"] = package
spec.loader.exec_module(package)
from mnist_exp.reports.picture_worker import main
main()
"""

_lock = threading.Lock()  # one request at a time, and one worker per process
_worker: subprocess.Popen | None = None
_exiting = False  # set at exit: no worker is started after the one that was stopped
_hooks_registered = False
_inherited: list[subprocess.Popen] = []  # a forked child's copies of its parent's worker, never used


class WorkerUnavailable(Exception):
    """The worker could not be started, or did not answer."""


def start() -> None:
    """Start the worker unless it runs already; a worker that cannot start leaves the drawing to this process."""
    with _lock:
        try:
            _running_worker()
        except WorkerUnavailable as reason:
            log.debug("no picture worker: %s", reason)


def pid() -> int | None:
    """The running worker's process id, if one runs."""
    with _lock:
        return _worker.pid if _worker is not None and _worker.poll() is None else None


def draw_run_plots(folder: Path, history: Mapping[str, Sequence[float]], images: np.ndarray, labels: np.ndarray,
                   predictions: np.ndarray, class_names: Sequence[str]) -> None:
    """mnist_exp.reports.plots.write_run_plots into `folder`, by the worker, else here; raises what drawing raised."""
    request = {"folder": Path(folder), "history": {key: list(values) for key, values in history.items()},
               "images": images, "labels": labels, "predictions": predictions, "class_names": list(class_names)}
    with _lock:
        try:
            error = _ask(request)
        except WorkerUnavailable as reason:
            log.debug("drawing the pictures in this process: %s", reason)
            from mnist_exp.reports.plots import write_run_plots

            write_run_plots(**request)
            return
    if error is not None:
        raise RuntimeError(error)


def stop() -> None:
    """End the worker. No request is in flight once the lock is held, so nothing of it can be lost."""
    with _lock:
        _discard_worker()


def _stop_at_exit() -> None:
    global _exiting
    with _lock:
        _exiting = True
        _discard_worker()


def _discard_worker() -> None:
    global _worker
    worker, _worker = _worker, None
    if worker is None:
        return
    for pipe in (worker.stdin, worker.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    worker.kill()
    worker.wait()


def _running_worker() -> subprocess.Popen:
    global _worker, _hooks_registered
    if _exiting:
        raise WorkerUnavailable("the process is exiting")
    if _worker is not None and _worker.poll() is None:
        return _worker
    _discard_worker()
    try:
        _worker = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(PACKAGE_ROOT / "mnist_exp")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    except (OSError, ValueError) as error:
        raise WorkerUnavailable(f"cannot start it: {error}") from None
    if not _hooks_registered:
        atexit.register(_stop_at_exit)
        os.register_at_fork(after_in_child=_forget_in_forked_child)
        _hooks_registered = True
    return _worker


def _ask(request: dict[str, Any]) -> str | None:
    worker = _running_worker()
    try:
        _write(worker.stdin, request)
        # The reply comes whole or not at all, so the buffer is empty while select waits on the pipe.
        answered, _, _ = select.select([worker.stdout], [], [], ANSWER_TIMEOUT_S)
        reply = _read(worker.stdout) if answered else None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as error:
        _discard_worker()
        raise WorkerUnavailable(f"it failed: {type(error).__name__}: {error}") from None
    except BaseException:  # an interrupt mid-request: the pipe is out of step, the worker is of no more use
        _discard_worker()
        raise
    if not isinstance(reply, dict):
        _discard_worker()
        raise WorkerUnavailable("it ended or did not answer in time")
    return reply["error"]


def _write(pipe: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_FRAME.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def _read(pipe: BinaryIO) -> Any | None:
    """The next message, or None at the end of the pipe."""
    header = pipe.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (length,) = _FRAME.unpack(header)
    data = pipe.read(length)
    return pickle.loads(data) if len(data) == length else None


def _forget_in_forked_child() -> None:
    # A fork (multiprocessing's default start method) holds copies of the pipe's ends, which would keep the
    # worker alive after this process dies. The child closes its copies of the descriptors and keeps the file
    # objects unreachable-but-alive, so no later garbage collection closes a descriptor number reused since.
    global _worker, _lock
    if _worker is not None:
        for pipe in (_worker.stdin, _worker.stdout):
            try:
                os.close(pipe.fileno())
            except (OSError, ValueError):
                pass
        _inherited.append(_worker)
    _worker, _lock = None, threading.Lock()


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: draw each request's pictures, answer {"error": None or one line}, until the input ends."""
    from mnist_exp.reports.plots import preload, write_run_plots

    preload()
    while (request := _read(requests)) is not None:
        try:
            write_run_plots(**request)
            error = None
        except Exception as failure:  # answered, and the next run's pictures still get drawn
            error = f"{type(failure).__name__}: {failure}".splitlines()[0]
        _write(replies, {"error": error})


def main() -> None:
    # Replies go to the pipe that was stdout; anything a library prints goes to stderr instead of into them.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)
    replies.close()
    # Nothing is left to flush: skip the interpreter's teardown.
    os._exit(0)

