"""The Optuna search loop: ask, launch, tell, until the study holds `n_trials` finished trials.

Safe against interrupts at any moment: asking for a trial and recording it as ours, and telling its
result, each complete whole; a Ctrl-C or SIGTERM ends every trial in flight as FAIL before it
propagates. Trials of a process that died (SIGKILL) are failed by the next search on that study.
The Hydra sweeper plugin adapts this to Hydra; the job side is mnist_exp.multirun.search.trial_reporter.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_exp.multirun.job_context import INTERRUPTED_REASON, JobOutcome
from mnist_exp.multirun.search.search_baseline import enqueue_baseline
from mnist_exp.multirun.search.search_checks import check_space, check_study_space
from mnist_exp.multirun.search.search_result import MODEL_ATTR, SearchResult, TrialOutcome
from mnist_exp.multirun.search.search_space import (
    locks_storage,
    make_pruner,
    make_sampler,
    make_storage,
    storage_lock,
    suggest_overrides,
)
from mnist_exp.multirun.search.trial_reaper import OWNER_ATTR, fail_abandoned_trials
from mnist_exp.multirun.sweep_worker import JOBS_STOP_GRACE_S
from mnist_exp.system import interrupts
from mnist_exp.system.errors import ExperimentError, first_line
from mnist_exp.system.processes import owner

__all__ = ["Search", "SearchResult", "TrialJob", "TrialOutcome"]

log = logging.getLogger(__name__)

FINISHED_STATES = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class TrialJob:
    """One trial to launch: its number, the overrides of its job (fixed ones first), and the job's index."""

    number: int
    overrides: list[str]
    index: int


# launch(jobs, index of the first job) -> per job: its outcome, or the exception that stopped it
Launch = Callable[[list[TrialJob], int], list[Any]]


@dataclass
class _Loop:
    """What the launching threads share; every field is read and written under `lock`."""

    study: Any
    storage: Any
    sampler: Any
    fixed: list[str]
    failures_allowed: int
    failures: int = 0
    launched: int = 0
    running: dict[int, Any] = field(default_factory=dict)  # trial number -> optuna Trial
    stopped: bool = False
    error: Exception | None = None  # what stopped a slot thread
    slots: list[threading.Thread] = field(default_factory=list)  # the launching threads, when concurrent
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Search:
    """Ask-and-tell until `n_trials` trials of the study have finished (COMPLETE or PRUNED)."""

    storage: str
    study_name: str
    metric: str
    direction: str
    space: Mapping[str, Mapping[str, Any]]
    sampler: Mapping[str, Any]
    pruner: Mapping[str, Any]
    n_trials: int
    n_jobs: int = 1
    max_failures: int | None = None
    baseline: Mapping[str, Any] | None = None  # the params of the trial to run first (search_baseline)
    # Several objectives, metric -> direction, the first being `metric`: a multi-objective study. {} for one.
    objectives: Mapping[str, str] = field(default_factory=dict)
    # Whether open_study created the study: of searches starting together on a new study, one did.
    created: bool = field(default=False, init=False)
    _study: Any = field(default=None, init=False, repr=False)
    _storage: Any = field(default=None, init=False, repr=False)
    _sampler: Any = field(default=None, init=False, repr=False)

    def open_study(self):
        """Create or load the study, and check it can take this search; ExperimentError if not."""
        import optuna

        if self._study is not None:
            return self._study
        check_space(self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._sampler = make_sampler(self.sampler, self.space)
        self._storage = make_storage(self.storage)
        directions = list(self.objectives.values()) or [self.direction]
        try:  # the storage makes one of several searches creating the study at once succeed
            study = optuna.create_study(storage=self._storage, study_name=self.study_name, directions=directions,
                                        sampler=self._sampler, pruner=make_pruner(self.pruner))
            self.created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(storage=self._storage, study_name=self.study_name, sampler=self._sampler,
                                      pruner=make_pruner(self.pruner))
        created = [d.name.lower() for d in study.directions]
        if created != directions:
            raise ExperimentError(
                f"study {self.study_name} in {self.storage} was created to {' and '.join(created)}, "
                f"not {' and '.join(directions)}; choose another hydra.sweeper.study_name"
            )
        with storage_lock(self.storage, self.study_name):  # two new searches on one study: the first one's space
            check_study_space(study, self.space, f"study {self.study_name} in {self.storage}")
        if not study.metric_names:  # what optuna-dashboard and Optuna's plots call the objectives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" since Optuna 3.2
                study.set_metric_names(list(self.objectives) or [self.metric])
        held = len(study.get_trials(deepcopy=False))
        if held and self.sampler.get("seed") is not None:
            # A seeded sampler starts its random draws over in every process: a resumed search would try the
            # first search's points again. Seeded by how far the study got, it stays reproducible.
            self._sampler = make_sampler({**self.sampler, "seed": self.sampler["seed"] + held}, self.space)
            study.sampler = self._sampler
        self._study = study
        return study

    def run(self, fixed_overrides: Sequence[str], launch: Launch, concurrent: bool = False) -> SearchResult:
        """Run the search; `concurrent` launches from n_jobs threads (for launchers that use other processes)."""
        study = self.open_study()
        with storage_lock(self.storage, self.study_name):
            abandoned = fail_abandoned_trials(study, self._storage, asks_locked=locks_storage(self.storage))
        if abandoned:
            log.warning("marked FAIL trials %s, left RUNNING by a sweep that died", abandoned)
        if self.baseline is not None and not self._grid:
            enqueue_baseline(study, self.storage, self.baseline, self.n_trials)
        loop = _Loop(study, self._storage, self._sampler, list(fixed_overrides),
                     self.max_failures if self.max_failures is not None else self.n_trials)
        with interrupts.scope():
            try:
                with interrupts.errors_count_as_interrupt():
                    self._launch_all(loop, launch, concurrent)
            except KeyboardInterrupt:
                self._fail_running(loop)
                _wait_for_slots(loop)
                raise
            except Exception as error:  # the storage failed (locked, gone): no trial stays RUNNING
                self._fail_running(loop, f"the search stopped: {type(error).__name__}")
                raise ExperimentError(f"the search stopped: {type(error).__name__}: {first_line(str(error))}") \
                    from None
        result = SearchResult(self.study_name, self.storage, self.metric, self.direction, ran_now=loop.launched,
                              objectives=dict(self.objectives))
        # A grid runs every point, the baseline's among them, rather than run it twice.
        result.collect(study, self.baseline if self._grid else None)
        return result

    def _launch_all(self, loop: _Loop, launch: Launch, concurrent: bool) -> None:
        if concurrent and self.n_jobs > 1:
            return self._run_slots(loop, launch)
        while jobs := [job for job in (self._next_job(loop) for _ in range(self.n_jobs)) if job]:
            returns = launch(jobs, jobs[0].index)
            for job, returned in zip(jobs, returns, strict=True):
                self._finish(loop, job, returned)

    @property
    def _grid(self) -> bool:
        import optuna

        return isinstance(self._sampler, optuna.samplers.GridSampler)

    def _run_slots(self, loop: _Loop, launch: Launch) -> None:
        # One thread per slot, each launching its next trial as soon as its last one ends:
        # a long trial never holds the other slot idle behind a batch barrier.
        loop.slots = [threading.Thread(target=self._keep_launching, args=(loop, launch), daemon=True)
                      for _ in range(self.n_jobs)]
        for slot in loop.slots:
            slot.start()
        for slot in loop.slots:
            slot.join()
        interrupts.check()
        if loop.error is not None:
            raise loop.error

    def _next_job(self, loop: _Loop) -> TrialJob | None:
        """Ask for the next trial, or None when enough trials are finished or running."""
        import optuna

        interrupts.check()
        # Asked for, stamped with its owner and registered as running, or none of it. The storage's lock makes
        # counting and asking one step for every process sharing the study: two searches that counted at once
        # would each ask for the last trial.
        with loop.lock, interrupts.deferred(), storage_lock(self.storage, self.study_name):
            if loop.stopped:
                return None
            finished = len(loop.study.get_trials(deepcopy=False, states=_states(FINISHED_STATES)))
            # RUNNING trials of any process sharing the study (this one's, and other workers'): several
            # sweeps on one storage stop together at n_trials instead of each running its own last ones.
            running = len(loop.study.get_trials(deepcopy=False, states=_states(("RUNNING",))))
            remaining = self.n_trials - finished - max(running, len(loop.running))
            if remaining <= 0:
                return None
            if loop.failures >= loop.failures_allowed:
                log.warning("stopping: %d trials failed in this sweep; %d still to run", loop.failures, remaining)
                loop.stopped = True
                return None
            if isinstance(loop.sampler, optuna.samplers.GridSampler) and loop.sampler.is_exhausted(loop.study):
                log.warning("stopping: every point of the grid has been tried; %d still to run", remaining)
                loop.stopped = True
                return None
            trial = loop.study.ask()
            trial.set_user_attr(OWNER_ATTR, owner())
            overrides = suggest_overrides(trial, self.space)
            trial.set_user_attr("overrides", overrides)
            job = TrialJob(trial.number, [*loop.fixed, *overrides], loop.launched)
            loop.launched += 1
            loop.running[trial.number] = trial
            return job

    def _finish(self, loop: _Loop, job: TrialJob, returned: Any) -> None:
        with loop.lock, interrupts.deferred():
            trial = loop.running.get(job.number)
            if trial is None:
                return  # already ended as FAIL by an interrupt
            loop.failures += _tell(loop.study, trial, returned) == "FAIL"
            del loop.running[job.number]

    def _fail_running(self, loop: _Loop, reason: str = INTERRUPTED_REASON) -> None:
        """Ctrl-C, SIGTERM or a failing storage: the trials in flight end now, as FAIL, so a rerun starts clean.
        Further signals wait until they are told (deferred before the lock is awaited)."""
        with interrupts.deferred(), loop.lock:
            loop.stopped = True
            for trial in loop.running.values():
                with contextlib.suppress(Exception):
                    _tell(loop.study, trial, JobOutcome("FAIL", reason=reason))
            loop.running.clear()

    def _keep_launching(self, loop: _Loop, launch: Launch) -> None:
        try:
            while job := self._next_job(loop):
                try:
                    (returned,) = launch([job], job.index)
                except Exception as error:  # a launcher failure fails this trial, not the search
                    returned = JobOutcome("FAIL", reason=INTERRUPTED_REASON) if interrupts.requested() else error
                self._finish(loop, job, returned)
        except KeyboardInterrupt:
            pass  # the main thread re-raises it after the join
        except Exception as error:  # the storage failed: the main thread ends the search with it
            with loop.lock:
                loop.error, loop.stopped = loop.error or error, True


def _wait_for_slots(loop: _Loop) -> None:
    """After an interrupt, give the jobs in other processes time to stop: their workers see the trials end
    and record their runs KILLED (mnist_exp.multirun.sweep_worker); exiting first would leave those runs RUNNING.
    Further signals meanwhile are absorbed (interrupts); the wait is bounded all the same."""
    deadline = time.monotonic() + JOBS_STOP_GRACE_S
    for slot in loop.slots:
        slot.join(max(0.0, deadline - time.monotonic()))
    if any(slot.is_alive() for slot in loop.slots):
        log.warning("stopped waiting for the trials in flight after %.0f s", JOBS_STOP_GRACE_S)


def _tell(study, trial, returned: Any) -> str:
    """Record a job's outcome (or the exception that stopped it) on its trial; returns the state told."""
    import optuna

    if not isinstance(returned, JobOutcome):
        reason = f"{type(returned).__name__}: {returned}" if isinstance(returned, BaseException) else "no result"
        returned = JobOutcome("FAIL", reason=reason)
    for key, value in (("run_id", returned.run_id), ("test_accuracy", returned.test_accuracy),
                       ("fail_reason", returned.reason), (MODEL_ATTR, returned.model)):
        if value is not None:
            trial.set_user_attr(key, value)
    state = returned.state
    values = list(returned.values or ()) if len(study.directions) > 1 else [returned.value]
    finite = len(values) == len(study.directions) and all(v is not None and math.isfinite(v) for v in values)
    if not (state == "PRUNED" or (state == "COMPLETE" and finite)):
        state = "FAIL"
    if state == "COMPLETE":
        study.tell(trial, values if len(values) > 1 else values[0])
    else:
        study.tell(trial, state=optuna.trial.TrialState[state])
    return state


def _states(names: Sequence[str]):
    import optuna

    return tuple(optuna.trial.TrialState[name] for name in names)
