"""Optuna search: the search space from YAML, samplers and pruners by name, the ask-and-tell loop,
and the job-side reporter that lets a pruner stop a trial running in another process.

The Hydra sweeper plugin (hydra_plugins/mnist_exp_optuna_sweeper) only adapts `Search` to Hydra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_exp import interrupts
from mnist_exp.errors import ExperimentError, RunPruned
from mnist_exp.processes import is_dead, owner

log = logging.getLogger(__name__)

# Per sweep, inherited by launcher workers: where the study lives and how to prune (JSON).
STUDY_ENV = "MNIST_EXP_OPTUNA_STUDY"
# Per job, set through hydra.job.env_set: which trial this job is.
TRIAL_ENV = "MNIST_EXP_OPTUNA_TRIAL_ID"
FINISHED_STATES = ("COMPLETE", "PRUNED")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "threshold", "none")
PARAM_TYPES = ("categorical", "float", "int", "layers")


# --- the search space ------------------------------------------------------------------------------------


def check_settings(sweeper: Mapping[str, Any]) -> None:
    """Raise ExperimentError for sweeper settings that cannot work, before anything is created."""
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ExperimentError(f"hydra.sweeper.{key}={value!r} is invalid: expected an integer >= 1")
    threads = sweeper.get("threads_per_job", "auto")
    if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise ExperimentError(f"hydra.sweeper.threads_per_job={threads!r} is invalid: expected auto or an integer >= 0")
    if not sweeper.get("study_name"):
        raise ExperimentError("hydra.sweeper.study_name is empty")
    space = sweeper.get("search_space") or {}
    check_space(space)
    make_sampler(sweeper.get("sampler") or {}, space)
    make_pruner(sweeper.get("pruner") or {})


def check_space(space: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ExperimentError for a search space that cannot be sampled (unknown type, inverted bounds, ...)."""
    if not space:
        raise ExperimentError("hydra.sweeper.search_space is empty; choose hparams_search=optuna or add parameters")
    for name, spec in space.items():
        where = f"hydra.sweeper.search_space.{name}"
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise ExperimentError(f"{where}.type={kind!r} is invalid: expected one of {', '.join(PARAM_TYPES)}")
        if kind == "categorical":
            if not spec.get("choices"):
                raise ExperimentError(f"{where}.choices must be a non-empty list")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise ExperimentError(f"{where} needs numeric low and high, got low={low!r} high={high!r}")
        if low > high:
            raise ExperimentError(f"{where} has inverted bounds: low={low} > high={high}")
        if spec.get("log") and low <= 0:
            raise ExperimentError(f"{where} is on a log scale, so low must be > 0 (got {low})")
        if kind == "layers":
            least, most = spec.get("min_layers", 1), spec.get("max_layers", 1)
            if not (isinstance(least, int) and isinstance(most, int) and 1 <= least <= most):
                raise ExperimentError(
                    f"{where} needs 1 <= min_layers <= max_layers, got min_layers={least} max_layers={most}"
                )
            if low < 1:
                raise ExperimentError(f"{where} layer widths must be >= 1 (got low={low})")


def suggest_overrides(trial, space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sample one point of the space from an Optuna trial, as Hydra command-line overrides."""
    overrides = []
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            value = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "float":
            value = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False),
                                        step=spec.get("step"))
        elif kind == "int":
            value = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False),
                                      step=spec.get("step", 1))
        else:
            layers = trial.suggest_int(f"{name}.layers", spec.get("min_layers", 1), spec.get("max_layers", 1))
            value = [
                trial.suggest_int(f"{name}.width_{i}", int(spec["low"]), int(spec["high"]), log=spec.get("log", False))
                for i in range(1, layers + 1)
            ]
        overrides.append(f"{name}={format_value(value)}")
    return overrides


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


# --- samplers, pruners, storage ------------------------------------------------------------------------------


def make_sampler(spec: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]):
    import optuna

    name = spec.get("name", "tpe")
    seed = spec.get("seed")
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.get("n_startup_trials", 10))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if any(p["type"] != "categorical" for p in space.values()):
            raise ExperimentError("hydra.sweeper.sampler.name=grid needs a search space of categorical parameters only")
        return optuna.samplers.GridSampler({k: list(p["choices"]) for k, p in space.items()}, seed=seed)
    raise ExperimentError(f"hydra.sweeper.sampler.name={name!r} is invalid: expected one of {', '.join(SAMPLERS)}")


def make_pruner(spec: Mapping[str, Any]):
    import optuna

    name = spec.get("name", "median")
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.get("n_startup_trials", 5), n_warmup_steps=spec.get("n_warmup_steps", 1)
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.get("min_resource", 1), max_resource=spec.get("max_resource", "auto"),
            reduction_factor=spec.get("reduction_factor", 3),
        )
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=spec.get("lower"), upper=spec.get("upper"))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ExperimentError(f"hydra.sweeper.pruner.name={name!r} is invalid: expected one of {', '.join(PRUNERS)}")


def make_storage(url: str):
    import optuna

    if url.startswith("sqlite:"):
        # Parallel workers write to one SQLite file: wait for its lock rather than fail at once.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def fail_abandoned_trials(study) -> list[int]:
    """Mark FAIL the RUNNING trials whose sweep process on this host has died; returns their numbers."""
    import optuna

    abandoned = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if is_dead(str(trial.user_attrs.get("owner", ""))):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "its sweep process died")
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            abandoned.append(trial.number)
    return abandoned


# --- the loop --------------------------------------------------------------------------------------------


@dataclass
class TrialOutcome:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    overrides: list[str]
    test_accuracy: float | None = None
    run_id: str | None = None
    reason: str | None = None


@dataclass
class SearchResult:
    study_name: str
    storage: str
    metric: str
    direction: str
    trials: list[TrialOutcome] = field(default_factory=list)
    ran_now: int = 0
    abandoned: list[int] = field(default_factory=list)

    @property
    def best(self) -> TrialOutcome | None:
        complete = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        if not complete:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(complete, key=lambda t: t.value)


@dataclass
class _Job:
    trial: Any
    overrides: list[str]
    index: int


@dataclass
class _Loop:
    """What the launching threads share; every field is read and written under `lock`."""

    study: Any
    sampler: Any
    fixed: list[str]
    per_job: list[str]
    failures_allowed: int
    failures: int = 0
    launched: int = 0
    running: dict[int, _Job] = field(default_factory=dict)  # by trial number
    told_to_stop: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM)"

# launch(list of override lists, index of the first job) -> per job: the dict the job returned, or an exception
Launch = Callable[[list[list[str]], int], list[Any]]


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

    def run(
        self, fixed_overrides: Sequence[str], launch: Launch, per_job_overrides: Sequence[str] = (),
        concurrent: bool = False,
    ) -> SearchResult:
        """Run the search; `concurrent` launches from n_jobs threads (for launchers that use other processes)."""
        import optuna

        check_space(self.space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = make_sampler(self.sampler, self.space)
        study = optuna.create_study(
            storage=make_storage(self.storage), study_name=self.study_name, direction=self.direction,
            sampler=sampler, pruner=make_pruner(self.pruner), load_if_exists=True,
        )
        if study.direction.name.lower() != self.direction:
            raise ExperimentError(
                f"study {self.study_name} in {self.storage} was created to {study.direction.name.lower()}, "
                f"not {self.direction}; choose another hydra.sweeper.study_name"
            )
        abandoned = fail_abandoned_trials(study)
        if abandoned:
            log.warning("marked FAIL trials %s, left RUNNING by a sweep that died", abandoned)
        os.environ[STUDY_ENV] = json.dumps({
            "storage": self.storage, "study_name": self.study_name, "metric": self.metric, "pruner": dict(self.pruner),
        })
        loop = _Loop(study, sampler, list(fixed_overrides), list(per_job_overrides),
                     self.max_failures if self.max_failures is not None else self.n_trials)
        try:
            if concurrent and self.n_jobs > 1:
                # One thread per slot, each launching its next trial as soon as its last one ends:
                # a long trial never holds the other slot idle behind a batch barrier.
                workers = [threading.Thread(target=self._keep_launching, args=(loop, launch), daemon=True)
                           for _ in range(self.n_jobs)]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                interrupts.check()
            else:
                while jobs := [job for job in (self._next_job(loop) for _ in range(self.n_jobs)) if job]:
                    returns = launch([job.overrides for job in jobs], jobs[0].index)
                    for job, returned in zip(jobs, returns, strict=True):
                        self._finish(loop, job, returned)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: the trials in flight end now, as FAIL, so a rerun starts clean.
            with loop.lock:
                for job in loop.running.values():
                    with contextlib.suppress(Exception):
                        self._tell(loop.study, job.trial, {"state": "FAIL", "reason": INTERRUPTED_REASON})
                loop.running.clear()
            raise
        result = SearchResult(self.study_name, self.storage, self.metric, self.direction, abandoned=abandoned,
                              ran_now=loop.launched)
        result.trials = [_outcome(t) for t in study.get_trials(deepcopy=False)]
        return result

    def _next_job(self, loop: _Loop) -> _Job | None:
        """Ask for the next trial, or None when enough trials are finished or running."""
        import optuna

        interrupts.check()
        with loop.lock:
            finished = len(loop.study.get_trials(deepcopy=False, states=_states(FINISHED_STATES)))
            # RUNNING trials of any process sharing the study (this one's, and other workers'): several
            # sweeps on one storage stop together at n_trials instead of each running its own last ones.
            running = len(loop.study.get_trials(deepcopy=False, states=_states(("RUNNING",))))
            remaining = self.n_trials - finished - max(running, len(loop.running))
            if remaining <= 0:
                return None
            if loop.failures >= loop.failures_allowed:
                if not loop.told_to_stop:
                    log.warning("stopping: %d trials failed in this sweep; %d still to run", loop.failures, remaining)
                loop.told_to_stop = True
                return None
            sampler = loop.sampler
            if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(loop.study):
                if not loop.told_to_stop:
                    log.warning("stopping: every point of the grid has been tried; %d still to run", remaining)
                loop.told_to_stop = True
                return None
            trial = loop.study.ask()
            overrides = suggest_overrides(trial, self.space)
            trial.set_user_attr("owner", owner())
            trial.set_user_attr("overrides", overrides)
            trial_env = f"+hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}"
            job = _Job(trial, [*loop.fixed, *overrides, *loop.per_job, trial_env], loop.launched)
            loop.launched += 1
            loop.running[trial.number] = job
            return job

    def _finish(self, loop: _Loop, job: _Job, returned: Any) -> None:
        with loop.lock:
            loop.running.pop(job.trial.number, None)
            loop.failures += self._tell(loop.study, job.trial, returned) == "FAIL"

    def _keep_launching(self, loop: _Loop, launch: Launch) -> None:
        with contextlib.suppress(KeyboardInterrupt):  # the main thread re-raises it after the join
            self._launch_until_done(loop, launch)

    def _launch_until_done(self, loop: _Loop, launch: Launch) -> None:
        while job := self._next_job(loop):
            try:
                (returned,) = launch([job.overrides], job.index)
            except Exception as error:  # a launcher failure fails this trial, not the search
                returned = error
            self._finish(loop, job, returned)

    @staticmethod
    def _tell(study, trial, returned: Any) -> str:
        import optuna

        if isinstance(returned, BaseException) or not isinstance(returned, Mapping):
            reason = f"{type(returned).__name__}: {returned}" if isinstance(returned, BaseException) else "no result"
            returned = {"state": "FAIL", "reason": reason}
        state = returned.get("state", "FAIL")
        for key in ("run_id", "test_accuracy", "reason"):
            if returned.get(key) is not None:
                trial.set_user_attr(key if key != "reason" else "fail_reason", returned[key])
        value = returned.get("value")
        if not (state == "PRUNED" or (state == "COMPLETE" and value is not None and math.isfinite(value))):
            state = "FAIL"
        try:
            if state == "COMPLETE":
                study.tell(trial, value)
            else:
                study.tell(trial, state=optuna.trial.TrialState[state])
        except RuntimeError as error:
            # GridSampler calls study.stop() once the grid is covered, which only works inside
            # study.optimize(); the trial's state is stored before that, and run() checks is_exhausted.
            if "Study.stop" not in str(error):
                raise
        return state


def _states(names: Sequence[str]):
    import optuna

    return tuple(optuna.trial.TrialState[name] for name in names)


def _outcome(trial) -> TrialOutcome:
    return TrialOutcome(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.state.name == "COMPLETE" else None,
        params=dict(trial.params),
        overrides=list(trial.user_attrs.get("overrides", [])),
        test_accuracy=trial.user_attrs.get("test_accuracy"),
        run_id=trial.user_attrs.get("run_id"),
        reason=trial.user_attrs.get("fail_reason"),
    )


# --- the job side ----------------------------------------------------------------------------------------


@dataclass
class TrialReporter:
    """Reports the optimised metric after every epoch to the trial; raises RunPruned when the pruner says stop."""

    trial: Any
    metric: str

    @property
    def number(self) -> int:
        return self.trial.number

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None:
            return
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise RunPruned(f"pruned after epoch {epoch}: {self.metric}={value:.4f}")


def reporter_from_env() -> TrialReporter | None:
    """The reporter for this job when it is an Optuna trial (the sweeper set the environment), else None."""
    trial_id, study_json = os.environ.get(TRIAL_ENV), os.environ.get(STUDY_ENV)
    if not trial_id or not study_json:
        return None
    import optuna

    study_info = json.loads(study_json)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=study_info["study_name"], storage=make_storage(study_info["storage"]),
        pruner=make_pruner(study_info["pruner"]),
    )
    return TrialReporter(trial=optuna.trial.Trial(study, int(trial_id)), metric=study_info["metric"])


# --- the answer ------------------------------------------------------------------------------------------


def retrain_command(result: SearchResult, prefix: Sequence[str]) -> str | None:
    """The single-run command that trains the best trial's configuration again."""
    import shlex

    best = result.best
    if best is None:
        return None
    return " ".join(["python -m mnist_exp", *(shlex.quote(a) for a in [*prefix, *best.overrides])])


def format_summary(result: SearchResult, retrain: str | None) -> str:
    """The end-of-search report: counts, every trial best first, the best trial and how to retrain it."""
    counts = {state: sum(t.state == state for t in result.trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [
        f"\nStudy {result.study_name} ({result.storage}): {counts['COMPLETE'] + counts['PRUNED']} finished trials "
        f"({counts['COMPLETE']} COMPLETE, {counts['PRUNED']} PRUNED), {counts['FAIL']} FAIL; "
        f"{result.ran_now} run by this sweep",
        f"{'trial':>5}  {'state':<8} {result.metric:>12} {'test_acc':>8}  overrides",
    ]
    sign = -1 if result.direction == "maximize" else 1
    ordered = sorted(result.trials, key=lambda t: (t.value is None, sign * (t.value or 0.0), t.number))
    for trial in ordered:
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        test = "-" if trial.test_accuracy is None else f"{trial.test_accuracy:.4f}"
        detail = " ".join(trial.overrides) + (f"  [{trial.reason}]" if trial.reason else "")
        lines.append(f"{trial.number:>5}  {trial.state:<8} {value:>12} {test:>8}  {detail}")
    best = result.best
    if best is None:
        lines.append("no trial completed")
    else:
        test = "-" if best.test_accuracy is None else f"{best.test_accuracy:.4f}"
        lines.append(f"best trial {best.number}: {result.metric}={best.value:.4f} (test_accuracy={test}, "
                     "reported only: selection used validation)")
        lines.append(f"retrain: {retrain}")
    return "\n".join(lines)


def search_plots(result: SearchResult, folder) -> list:
    """Optimisation history and parameter importances as PNG (and HTML when plotly is installed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(study_name=result.study_name, storage=make_storage(result.storage))
    written = []
    plots = {
        "optimization_history": (optuna.visualization.matplotlib.plot_optimization_history,
                                 optuna.visualization.plot_optimization_history),
        "param_importances": (optuna.visualization.matplotlib.plot_param_importances,
                              optuna.visualization.plot_param_importances),
    }
    with warnings.catch_warnings():
        # "experimental" notices, and importance estimates from few trials: the plots still say what they can.
        warnings.simplefilter("ignore")
        for name, (static, interactive) in plots.items():
            try:
                axes = static(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                # Importances need two or more completed trials whose parameters differ.
                log.warning("no %s plot: %s", name, error)
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=100)
            plt.close(figure)
            written.append(folder / f"{name}.png")
            try:
                interactive(study).write_html(folder / f"{name}.html", include_plotlyjs=True)
                written.append(folder / f"{name}.html")
            except ImportError:
                pass  # plotly is optional
    return written
