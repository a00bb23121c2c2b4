"""Who runs a piece of work, and whether that process still lives.

Runs and trials are stamped with their owner so that a later start can tell work abandoned by a
killed process (SIGKILL, a lost worker) from work that is still going on. A stamp reads
`host:pid:pid-namespace:start-time:boot-id`: containers that share a host name (`--network host`)
have their own PID namespaces, machines that share one have their own boot ids, and a recycled PID
has another start time, so none of them is mistaken for the process that wrote the stamp.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    pid_namespace: str = ""  # "" where /proc cannot tell (not Linux)
    start_time: str = ""     # clock ticks since boot, field 22 of /proc/<pid>/stat
    boot_id: str = ""        # this boot of this kernel: two machines with one host name differ here

    def stamp(self) -> str:
        return f"{self.host}:{self.pid}:{self.pid_namespace}:{self.start_time}:{self.boot_id}"

    @classmethod
    def parse(cls, stamp: str) -> Owner | None:
        """The owner a stamp names; None for anything else (an empty or foreign tag)."""
        host, pid, namespace, start_time, boot_id = (stamp.split(":", 4) + [""] * 5)[:5]
        if not host or not pid.isdigit():
            return None
        return cls(host, int(pid), namespace, start_time, boot_id)


def current() -> Owner:
    """This process."""
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, _pid_namespace(), _start_time(pid) or "", _boot_id())


def owner() -> str:
    """This process's stamp."""
    return current().stamp()


def is_dead(stamp: str) -> bool:
    """True only when `stamp` names a process that this process can see and that no longer exists.

    Work owned by another host or PID namespace is never called dead: without heartbeats it cannot be known.
    """
    owner_ = Owner.parse(stamp)
    here = current()
    if owner_ is None or owner_.host != here.host:
        return False
    if owner_.pid_namespace and owner_.pid_namespace != here.pid_namespace:
        return False
    if owner_.boot_id and owner_.boot_id != here.boot_id:
        return False
    if owner_.start_time and here.start_time:
        started = _start_time(owner_.pid)
        if started:
            return started != owner_.start_time
        if started == "":
            return False  # /proc would not say
        # No /proc entry: gone, or hidden from us (/proc mounted with hidepid): ask the kernel.
    try:
        os.kill(owner_.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _boot_id() -> str:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink(PROC / "self" / "ns" / "pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None when no such process exists."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: fields after its last ')' are fixed.
    return stat.rsplit(")", 1)[1].split()[19]
