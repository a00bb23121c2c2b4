"""What Python's garbage collector is left to walk, decided here and nowhere else.

TensorFlow, Keras and MLflow make millions of objects that live as long as the process. A full collection walks
all of them: Keras' clear_session() runs one before every model (each trial of a search), and the interpreter
runs its last ones at exit, for seconds after the result is printed. Frozen objects are never walked again.
Freezing keeps memory as it is: it only stops the walking (https://docs.python.org/3/library/gc.html#gc.freeze).
"""

from __future__ import annotations

import gc


def freeze_what_imports_made() -> None:
    """Once per process, after the heavy imports: later collections walk only what models made since."""
    if gc.get_freeze_count() == 0:
        gc.freeze()


def leave_the_rest_to_exit() -> None:
    """The process is about to end (every outcome is recorded and printed): its objects are left to the
    operating system, which frees them at once; atexit handlers and module teardown still run."""
    gc.freeze()
