"""Who runs a piece of work (host and process id), and whether that process still lives.

Runs and trials are stamped with their owner so that a later start can tell work abandoned by a
killed process (SIGKILL, a lost worker) from work that is still going on.
"""

from __future__ import annotations

import os
import socket


def owner() -> str:
    """This process as 'host:pid'."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead(owner_stamp: str) -> bool:
    """True only when `owner_stamp` names a process on this host that no longer exists.

    Work owned by another host is never called dead: without heartbeats it cannot be known.
    """
    host, _, pid = owner_stamp.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
