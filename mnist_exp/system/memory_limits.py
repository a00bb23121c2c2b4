"""What this process may hold: `ulimit -v`, `ulimit -d`, its cgroup's memory limit and the machine's available
memory, each less what TensorFlow itself takes (mnist_exp.training.model_memory weighs a model against it)."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
# What a training process holds before its model and data: TensorFlow, Keras and MLflow imported and a tiny
# model trained; measured with real runs (BENCHMARKS.md, "Memory a model needs"). A limit below it cannot run.
FRAMEWORK_ADDRESS_SPACE = 3.0 * GIB  # what `ulimit -v` (RLIMIT_AS) must leave room for
FRAMEWORK_DATA = 0.8 * GIB  # what `ulimit -d` (RLIMIT_DATA) must leave room for
FRAMEWORK_RESIDENT = 0.85 * GIB  # resident memory (physical, a cgroup's)
UNLIMITED = 2**62  # a cgroup limit at or above this is no limit (v1 writes 9223372036854771712)


@dataclass(frozen=True)
class Budget:
    """What this process may hold in all (`limit`, named by `source`), and what the framework takes of it: the
    measured figure, whatever the process holds already (what a search's earlier trials freed, the allocator reuses)."""

    limit: float
    source: str
    framework: float

    @property
    def for_the_work(self) -> float:
        return self.limit - self.framework


def process_budget(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> Budget | None:
    """The tightest of what this process may hold: `ulimit -v`, `ulimit -d`, its cgroup's memory limit, and the
    machine's available memory; None where none can be read."""
    status = _status(proc / "self" / "status")
    budgets = []
    for kind, source, framework in ((resource.RLIMIT_AS, "ulimit -v", FRAMEWORK_ADDRESS_SPACE),
                                    (resource.RLIMIT_DATA, "ulimit -d", FRAMEWORK_DATA)):
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            budgets.append(Budget(soft, source, framework))
    resident = status.get("VmRSS", 0)
    cgroup = _cgroup_room(proc, cgroups)
    if cgroup is not None:
        room, source = cgroup
        # What the cgroup still takes, plus what this process already holds of it.
        budgets.append(Budget(room + resident, source, FRAMEWORK_RESIDENT))
    available = _meminfo(proc / "meminfo").get("MemAvailable")
    if available is not None:
        budgets.append(Budget(available + resident, "available memory", FRAMEWORK_RESIDENT))
    return min(budgets, key=lambda budget: budget.for_the_work, default=None)


def _cgroup_room(proc: Path, cgroups: Path) -> tuple[float, str] | None:
    """(bytes the cgroup can still take, which limit) for the nearest memory limit of this process's cgroup:
    v2's memory.max or v1's memory.limit_in_bytes, less what the cgroup holds apart from reclaimable file cache."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {}  # "" for v2, else the v1 controller list
    for line in lines:
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path.strip("/")
    candidates = []
    if "" in paths:
        candidates.append((cgroups, paths[""], "memory.max", "memory.current", "inactive_file"))
    v1 = next((path for controllers, path in paths.items() if "memory" in controllers.split(",")), None)
    if v1 is not None:
        candidates.append((cgroups / "memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "total_inactive_file"))
    for root, path, limit_file, usage_file, cache_key in candidates:
        # Inside a container the process's own cgroup is the root of what is mounted: try it, then its parents.
        parts = path.split("/") if path else []
        for depth in range(len(parts), -1, -1):
            folder = root.joinpath(*parts[:depth])
            limit = _number(folder / limit_file)
            if limit is None or limit >= UNLIMITED:
                continue
            usage = _number(folder / usage_file) or 0
            cache = _keyed(folder / "memory.stat").get(cache_key, 0)
            return max(0.0, limit - (usage - cache)), f"cgroup {limit_file}"
    return None


def _number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # v2 writes "max" for no limit


def _keyed(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values


def _meminfo(path: Path) -> dict[str, int]:
    """/proc/meminfo in bytes ("MemAvailable:  22375536 kB")."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value.split()[0]) * 1024 for key, _, value in (line.partition(":") for line in lines)
            if value.split() and value.split()[0].isdigit()}


def _status(path: Path) -> dict[str, int]:
    return {key: value for key, value in _meminfo(path).items() if key.startswith("Vm")}
