"""A sweep's job in a worker process that the sweeping process started itself (joblib's loky workers).

Such a worker gets no signal when only the sweeping process is told to stop (`kill PID`), and it
outlives a sweeping process killed outright (SIGKILL), training on for minutes with gigabytes of
memory and then clashing with the resumed search. So while it runs a job it handles Ctrl-C and
SIGTERM as the CLI does, and a watcher thread stops the job (the run ends KILLED) as soon as the
sweep no longer wants it: the sweeping process is gone, or it ended the job's trial (a search) or its
parent run (a grid sweep). A worker whose
sweeping process is gone then exits. Ray's workers are not our children and are left to Ray.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

from mnist_exp.system import interrupts
from mnist_exp.system.errors import INTERRUPTED

WATCH_INTERVAL_S = 1.0
# How long an interrupted sweeping process waits for the jobs in its workers to record their runs KILLED.
JOBS_STOP_GRACE_S = 30.0
# How long an orphaned worker waits for its job to record the run KILLED before it exits anyway.
ORPHAN_GRACE_S = 30.0


def is_worker_of(sweeper_pid: int | None) -> bool:
    """True in a process the sweeping process `sweeper_pid` started itself (not the sweeping process)."""
    return sweeper_pid is not None and os.getpid() != sweeper_pid and os.getppid() == sweeper_pid


@contextlib.contextmanager
def watched_job(sweeper_pid: int, sweep_ended: Callable[[], bool] | None = None) -> Iterator[None]:
    """Run one job in this worker, stopped (KeyboardInterrupt) when the sweep gives it up; `sweep_ended`
    says whether the sweep has ended the job's trial or parent run (Ctrl-C or SIGTERM to the sweeping process)."""
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    job_done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(sweeper_pid, sweep_ended, job_done), name="watch-sweep",
                               daemon=True)
    watcher.start()
    try:
        with interrupts.scope():
            yield
    finally:
        job_done.set()
        for number, handler in handlers.items():  # the worker as loky made it, between jobs
            signal.signal(number, handler)


def _watch(sweeper_pid: int, sweep_ended: Callable[[], bool] | None, job_done: threading.Event) -> None:
    while not job_done.wait(WATCH_INTERVAL_S):
        orphaned = os.getppid() != sweeper_pid
        if orphaned or (sweep_ended is not None and _ended(sweep_ended)):
            os.kill(os.getpid(), signal.SIGTERM)  # the job stops as after `kill`: its run ends KILLED
            if orphaned:
                job_done.wait(ORPHAN_GRACE_S)
                # Nobody is left to take this worker's result or to reuse it.
                os._exit(INTERRUPTED)
            return


def _ended(sweep_ended: Callable[[], bool]) -> bool:
    try:
        return sweep_ended()
    except Exception:  # the storage is busy or gone: ask again later, the parent's liveness still counts
        return False
