"""The sweeping process's side of a multirun, shared by the grid and Optuna sweepers (hydra_plugins/):
checks before anything starts, the parent run around the jobs, the launcher's view, the printed results."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig

from mnist_exp.config.plan import RunPlan, resolve
from mnist_exp.multirun.sweep_worker import JOBS_STOP_GRACE_S
from mnist_exp.system import interrupts
from mnist_exp.system.errors import JOBS_FAILED, ExperimentError, exit_with
from mnist_exp.system.net import CONNECT_TIMEOUT_S, can_connect
from mnist_exp.system.redaction import mask

if TYPE_CHECKING:
    from mnist_exp.multirun.parent_run import MultirunParent, SweepSummary
    from mnist_exp.multirun.search.search import Search, SearchResult

log = logging.getLogger(__name__)
Returned = TypeVar("Returned")

# Where jobs run, by the launcher's `_target_` in the config (Hydra's own configs name these classes).
IN_PROCESS, JOBLIB, RAY, OTHER = "in-process", "joblib", "ray", "other"
LAUNCHERS = {
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher": IN_PROCESS,
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher": JOBLIB,
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher": RAY,
}


def launcher_kind(config: DictConfig) -> str:
    """IN_PROCESS, JOBLIB, RAY, or OTHER for a launcher this project does not know (its jobs run elsewhere)."""
    return LAUNCHERS.get(str(config.hydra.launcher.get("_target_", "")), OTHER)


@contextlib.contextmanager
def parent_run(config: DictConfig, sweep_overrides: Sequence[str], sweep_key: str | None = None,
               resume: bool = False, search: Search | None = None,
               plan: RunPlan | None = None) -> Iterator[MultirunParent]:
    """Check the config and the Ray cluster (unless `plan` is the config, resolved and checked with the cluster by
    the caller), then open the multirun's parent run (mnist_exp.multirun.parent_run; with `resume`, the one of
    the sweep named `sweep_key`; for a `search`, its study's); one error line and exit 2 when something cannot
    work. The parent ends KILLED if the block does not close it."""
    from mnist_exp.multirun.parent_run import MultirunParent

    try:
        if plan is None:
            plan = resolve(config)
            check_ray_cluster(config)
        keep_ray_token_off_disk(config)
        if search is not None:
            parent = MultirunParent.open_for_study(config, plan, sweep_overrides, search.open_study(), search.storage)
        else:
            parent = MultirunParent.open(config, plan, sweep_overrides, sweep_key, resume)
    except ExperimentError as error:
        exit_with(str(error))
    try:
        yield parent
    finally:
        with interrupts.deferred():  # a second Ctrl-C must not leave the parent RUNNING
            parent.abandon()  # does nothing once the parent is closed


def check_ray_cluster(config: DictConfig) -> None:
    """With the Ray launcher and a cluster address, fail in seconds when nothing answers there:
    Ray itself retries for minutes."""
    if launcher_kind(config) != RAY:
        return
    launcher = config.hydra.launcher
    configured = ((launcher.get("ray") or {}).get("init") or {}).get("address")
    if configured is not None and not str(configured).strip():
        # Ray takes an empty address for neither a local cluster nor a running one: a ValueError traceback.
        raise ExperimentError("the Ray cluster address is empty (RAY_ADDRESS or hydra.launcher.ray.init.address): "
                              "unset it for a local Ray, or give host:port or auto")
    address = str(configured or "")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # none (a local Ray) or "auto": Ray finds it on this machine
    if not can_connect(host, int(port), timeout=CONNECT_TIMEOUT_S):
        raise ExperimentError(
            f"cannot reach the Ray cluster at {address} (RAY_ADDRESS or hydra.launcher.ray.init.address)"
        )


def keep_ray_token_off_disk(config: DictConfig) -> None:
    """Give a local Ray that this sweep starts a token in this process's environment (inherited by Ray's
    processes, written nowhere, gone with the sweep), unless the user configured one.

    Ray turns token authentication on for a local cluster `ray.init` starts and, when no token is
    configured, writes a new one to ~/.ray/auth_token with the umask's mode (0644: readable by every user of
    the machine) and leaves it there, where later `ray start --head` and clients find it
    (ray/_private/authentication/authentication_token_setup.py as of ray 2.60). A token of the user's
    (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token) is used as it is, never read or
    replaced here; a token file other users may read is warned about. RAY_AUTH_MODE=disabled, and joining a
    cluster (an address), are left to Ray. https://docs.ray.io/en/latest/ray-security/token-auth.html"""
    if launcher_kind(config) != RAY or os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        return
    address = str(((config.hydra.launcher.get("ray") or {}).get("init") or {}).get("address") or "")
    if address != "local" and (address or os.environ.get("RAY_ADDRESS")):
        return  # an existing cluster: Ray writes no token, and its token is the user's to give
    if os.environ.get("RAY_AUTH_TOKEN"):
        return
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size:
            if path.stat().st_mode & 0o077:
                log.warning("%s, Ray's authentication token, is readable by other users: chmod 600 %s", path, path)
            return
    # None, or RAY_AUTH_TOKEN_PATH names no token: Ray would write a new one over ~/.ray/auth_token.
    import secrets

    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # as long as the ones Ray makes


def start_ray_once(launcher: Any) -> None:
    """Start (or join) Ray with the launcher's settings, once, before several threads launch through it."""
    from mnist_exp.system.workarounds import ray_init_settings

    init = ray_init_settings(launcher)
    if init is None:
        return
    import ray

    if not ray.is_initialized():
        ray.init(**init)


def threads_per_job(config: DictConfig, n_jobs: int, threads: int | str) -> int | None:
    """TensorFlow threads for each of `n_jobs` parallel jobs; None leaves TensorFlow's default (all cores)."""
    kind = launcher_kind(config)
    if threads == 0 or n_jobs <= 1 or kind not in (JOBLIB, RAY):
        return None
    if threads != "auto":
        return int(threads)
    if kind == RAY:
        # A Ray job gets the CPUs it reserved, on whichever machine runs it.
        return int((config.hydra.launcher.get("ray") or {}).get("remote", {}).get("num_cpus") or 1)
    return max(1, (os.cpu_count() or 1) // n_jobs)


def launch_outcomes(launcher: Any, batch: list[list[str]], first_index: int) -> list[Any]:
    """Launch `batch`; per job, what it returned (a JobOutcome) or the exception it raised."""
    outcomes = []
    for job in launcher.launch(batch, initial_job_idx=first_index):
        try:
            outcomes.append(job.return_value)
        except Exception as error:  # the job raised: Hydra keeps the exception for us
            outcomes.append(error)
    return outcomes


def launch_off_main_thread(launch: Callable[[], Returned], stop: Callable[[], None]) -> Returned:
    """Run a launcher's blocking `launch` in a thread while the main thread waits for it.

    Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread; inside joblib's Parallel it would
    terminate the workers before their jobs record their runs KILLED. Here it calls `stop` instead (the
    sweep gives its jobs up, which their workers' watchers see: mnist_exp.multirun.sweep_worker), waits for the
    launch to return, bounded, and is raised again. Further signals meanwhile are absorbed (interrupts)."""
    returned: list[Returned] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(launch())
        except BaseException as error:  # handed to the main thread as it is
            raised.append(error)

    thread = threading.Thread(target=run, name="launch", daemon=True)
    thread.start()
    try:
        thread.join()
        interrupts.check()  # an interrupt Python dropped (raised inside a garbage-collector callback)
    except KeyboardInterrupt:
        stop()
        thread.join(JOBS_STOP_GRACE_S)
        if thread.is_alive():
            log.warning("stopped waiting for the jobs in flight after %.0f s", JOBS_STOP_GRACE_S)
        raise
    if raised:
        raise raised[0]
    return returned[0]


def report_grid(parent: MultirunParent, summary: SweepSummary) -> None:
    """The sorted table of a grid sweep's jobs; exit 1 after it if any job failed."""
    from mnist_exp.reports.tables import sweep_table
    from mnist_exp.tracking.store import ui_command

    print(f"\nSweep {parent.run_id}: {len(summary.rows)} jobs, sorted by final {summary.metric}")
    print(sweep_table(summary.rows), end="")
    if summary.repeats:
        from mnist_exp.reports.repeats import repeats_table

        print(f"Repeats: {len(summary.repeats)} configurations, mean ± std over seeds (complete runs only)")
        print(repeats_table(summary.repeats), end="")
    if summary.best is not None:
        print(f"best: {summary.best['run_id']}  ({summary.best['overrides'] or 'defaults'})")
    print(f"UI: {ui_command(parent.store.uri)}")
    if summary.failed:
        exit_with(f"{summary.failed} of {len(summary.rows)} jobs failed", JOBS_FAILED)


def announce_search(search: Search, parent: MultirunParent) -> None:
    """A search's first line: a new study (this search created it), or a resumed one (or one another search
    starting at the same moment created) and how many trials it holds already."""
    trials = search.open_study().get_trials(deepcopy=False)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    finished = counts["COMPLETE"] + counts["PRUNED"]
    where = f"study {search.study_name} ({mask(search.storage)})"
    if search.created:
        print(f"New {where}: {search.n_trials} trials to run; MLflow parent run {parent.run_id}", flush=True)
        return
    print(f"Resuming {where}: it holds {finished} finished trials ({counts['COMPLETE']} COMPLETE, "
          f"{counts['PRUNED']} PRUNED), {counts['FAIL']} FAIL; {max(0, search.n_trials - finished)} more to reach "
          f"n_trials={search.n_trials}; MLflow parent run {parent.run_id}", flush=True)


def report_search(parent: MultirunParent, result: SearchResult, summary: SweepSummary, retrain: str | None) -> None:
    """Counts, every trial best first, the best trial and how to retrain it; exit 1 if no trial completed
    (failed trials are part of a search: a diverging learning rate)."""
    from mnist_exp.reports.tables import score, trials_table
    from mnist_exp.tracking.store import ui_command

    counts = {state: sum(t.state == state for t in result.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    print(f"\nStudy {result.study_name} ({mask(result.storage)}): "
          f"{counts['COMPLETE'] + counts['PRUNED']} finished trials "
          f"({counts['COMPLETE']} COMPLETE, {counts['PRUNED']} PRUNED), {counts['FAIL']} FAIL; "
          f"{result.ran_now} run by this sweep")
    print(trials_table(result.trials, result.metric, list(result.objectives)), end="")
    best = result.best
    if result.objectives and result.front:
        ways = ", ".join(f"{m} {'up' if d == 'maximize' else 'down'}" for m, d in result.objectives.items())
        print(f"Pareto front ({ways}): trials {', '.join(str(t.number) for t in result.front)}")
    if best is None:
        print("no trial completed")
    else:
        chosen = f" (the front's best {result.metric}, the first objective)" if result.objectives else ""
        print(f"best trial {best.number}{chosen}: {result.metric}={best.value:.4f} "
              f"(test_accuracy={score(best.test_accuracy)}, reported only: selection used validation)")
        print(f"retrain: {retrain}")
    baseline = result.baseline
    if baseline is not None:
        print(f"baseline trial {baseline.number} (the config without the search space's suggestions): "
              f"{result.metric}={score(baseline.value)}"
              + (f"; the search's gain over it: {result.gain:+.4f}" if result.gain is not None else ""))
    if summary.champion is not None:
        name, version = summary.champion.split("/")
        print(f"registered models:/{name}@champion (version {version}): the best trial's model")
    print(f"MLflow parent run {parent.run_id} holds the trials table and plots")
    print(f"UI: {ui_command(parent.store.uri)}")
    if summary.failed and best is None:
        exit_with(f"{summary.failed} of {len(summary.rows)} jobs failed", JOBS_FAILED)
