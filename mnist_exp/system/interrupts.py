"""Ctrl-C and `kill`, remembered for as long as the work they interrupt.

Python raises KeyboardInterrupt wherever the main thread happens to be, and when that is inside
a garbage-collector callback the exception is printed and dropped. The handler below also
records the request, and long loops (epochs, trials) check it, so an interrupt is never lost.

The record belongs to the outermost `scope()` that is open (a run, a search): it is forgotten when
that scope ends, so a long-lived process (a notebook) runs normally after one interrupted run.
`deferred()` holds an interrupt back while a few store writes that belong together complete
(asking for a trial and recording who runs it), then raises it.

A second signal while the first is still stopping the work (people press Ctrl-C again, a process
group gets SIGINT and SIGTERM) is absorbed: raised again, it would break off the very writes that
record the work as KILLED, or print "Exception ignored" from a finalizer. Once nothing is left to
record, `ignore()` makes further signals harmless, so the exit code stays the one chosen.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)
_requested = threading.Event()
_state = threading.local()
_scopes = 0
_scopes_lock = threading.Lock()


def install() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt and be remembered."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def ignore() -> None:
    """Ignore SIGINT and SIGTERM from now on: the work is recorded, the process only has to exit.
    (Python puts back the default action for signals that have a Python handler while it shuts down,
    and a signal then would end the process by that signal instead of the exit code it chose.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt was requested in the current scope, even one Python dropped."""
    if _requested.is_set():
        raise KeyboardInterrupt


def requested() -> bool:
    return _requested.is_set()


@contextlib.contextmanager
def errors_count_as_interrupt() -> Iterator[None]:
    """An Exception raised once an interrupt was requested is raised as KeyboardInterrupt (from it): code the
    interrupt broke off midway, or one Python dropped in a garbage-collector callback, can fail on the way out
    (an AttributeError once failed a search's trial after Ctrl-C), and the work is then interrupted, not failed."""
    try:
        yield
    except Exception as error:
        if not requested():
            raise
        # Kept for whoever debugs the stop (the command line says only "interrupted").
        log.debug("raised while an interrupt stopped the work", exc_info=error)
        raise KeyboardInterrupt from error


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """The work an interrupt applies to; the outermost scope forgets the interrupt when it ends."""
    global _scopes
    with _scopes_lock:
        _scopes += 1
    try:
        yield
    finally:
        with _scopes_lock:
            _scopes -= 1
            if _scopes == 0:
                _requested.clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block whole: an interrupt during it is raised when it ends (main thread only)."""
    depth = getattr(_state, "deferring", 0)
    _state.deferring = depth + 1
    try:
        yield
    finally:
        _state.deferring = depth
    if depth == 0:
        check()


def _on_signal(signum, frame) -> None:
    stopping = _requested.is_set() and _scopes > 0
    if _scopes > 0:  # outside any work, nothing is remembered: the interrupt is only raised
        _requested.set()
    if stopping:
        return  # the first signal is already stopping this work
    if getattr(_state, "deferring", 0):
        return  # raised when the deferred block ends
    raise KeyboardInterrupt
