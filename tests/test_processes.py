"""Owner stamps: a dead process is told from a live one, and from one this process cannot see."""

from __future__ import annotations

import os
import subprocess
import sys

from mnist_exp.system import processes


def exited_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_this_process_is_alive_and_its_stamp_round_trips():
    stamp = processes.owner()
    assert processes.Owner.parse(stamp) == processes.current()
    assert not processes.is_dead(stamp)


def test_an_exited_process_on_this_host_is_dead():
    here = processes.current()
    assert processes.is_dead(processes.Owner(here.host, exited_pid(), here.pid_namespace, "1").stamp())
    assert processes.is_dead(f"{here.host}:{exited_pid()}"), "stamps written before start times were recorded"


def test_a_live_pid_that_started_at_another_time_is_a_reused_pid():
    here = processes.current()
    assert processes.is_dead(processes.Owner(here.host, here.pid, here.pid_namespace, "1").stamp())


def test_work_of_another_host_or_container_is_never_called_dead():
    here = processes.current()
    pid = exited_pid()
    assert not processes.is_dead(processes.Owner("another-host", pid, here.pid_namespace, "1").stamp())
    # Containers sharing this host name (--network host) have PID namespaces of their own.
    assert not processes.is_dead(processes.Owner(here.host, pid, "4026000001", "1").stamp())
    assert not processes.is_dead("") and not processes.is_dead("not a stamp")


def test_a_machine_with_the_same_host_name_is_not_this_one():
    here = processes.current()
    other_machine = processes.Owner(here.host, exited_pid(), here.pid_namespace, "1", "another-boot-id")
    assert not processes.is_dead(other_machine.stamp())


def test_a_live_process_hidden_from_proc_is_not_dead(monkeypatch):
    """/proc mounted with hidepid hides other users' processes; the kernel still knows they live."""
    here = processes.current()
    parent = processes.Owner(here.host, os.getppid(), here.pid_namespace, "1", here.boot_id)
    monkeypatch.setattr(processes, "_start_time", lambda pid: None if pid == os.getppid() else here.start_time)
    assert not processes.is_dead(parent.stamp())
