"""Ctrl-C and `kill`, remembered.

Python raises KeyboardInterrupt wherever the main thread happens to be, and when that is inside
a garbage-collector callback the exception is printed and dropped. The handler below also
records the request, and long loops (epochs, trials) check it, so an interrupt is never lost.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt and be remembered."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt was requested, even one Python dropped."""
    if _requested.is_set():
        raise KeyboardInterrupt


def _on_signal(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt
