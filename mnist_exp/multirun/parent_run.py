"""The MLflow parent run of a multirun, grid sweep or Optuna search alike: opened, filled and closed here alone.

The sweepers (hydra_plugins/) open it before the first job and close it after the last; jobs learn its
id from their JobContext and nest their runs under it; nothing else writes to it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from mnist_exp.config.plan import RunPlan
from mnist_exp.reports import tables
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.processes import is_dead, owner
from mnist_exp.system.redaction import mask
from mnist_exp.system.workarounds import replace_table
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_inputs import log_config
from mnist_exp.tracking.run_reaper import kill_abandoned_runs
from mnist_exp.tracking.store import Store, connect, sqlite_store_lock, store_writes

# The study's user attribute naming its parent run: {"run_id": ..., "store": the MLflow store's URI, masked}.
PARENT_ATTR = "mnist_exp.mlflow_parent_run"

if TYPE_CHECKING:
    from mnist_exp.multirun.search.search import SearchResult
    from mnist_exp.reports.repeats import RepeatGroup


@dataclass
class SweepSummary:
    """The children of a parent run, best first by the optimised metric."""

    metric: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    champion: str | None = None  # 'NAME/VERSION' of the model a search registered
    # The configurations that ran over several seeds (mnist_exp.reports.repeats); [] when every job is its own.
    repeats: list[RepeatGroup] = field(default_factory=list)

    @property
    def best(self) -> dict[str, Any] | None:
        return tables.best(self.rows, self.metric, self._value, tables.row_state)

    @property
    def failed(self) -> int:
        return sum(row["status"] != "FINISHED" for row in self.rows)

    def _value(self, row: Mapping[str, Any]) -> float | None:
        return row.get(f"final_{self.metric}")


class MultirunParent:
    """One parent run: `open` creates it, `close_grid` or `close_search` fills and ends it, `abandon` ends it
    KILLED when the multirun stops early (Ctrl-C, a crash)."""

    def __init__(self, cfg: DictConfig, plan: RunPlan, store: Store, run_id: str) -> None:
        self.cfg, self.store, self.run_id = cfg, store, run_id
        self.metric: str = plan.metric

    @classmethod
    def open(cls, cfg: DictConfig, plan: RunPlan, sweep_overrides: Sequence[str], sweep_key: str | None = None,
             resume: bool = False) -> MultirunParent:
        """A new parent run; with `resume`, the parent run of the sweep named `sweep_key` when there is one,
        RUNNING again (mnist_exp.multirun.grid_jobs)."""
        from mnist_exp.multirun import grid_jobs

        store = connect(plan)
        kill_abandoned_runs(store)
        with sqlite_store_lock(store.uri):  # the same sweep started twice at once: one of them opens it
            previous = grid_jobs.previous_sweep(store.client, store.experiment_id, sweep_key) \
                if resume and sweep_key else None
            if previous is not None:
                _reopen(store.client, previous)
                return cls(cfg, plan, store, previous.info.run_id)
            run_id = _create(store, sweep_overrides, {run_tags.SWEEP_KEY_TAG: sweep_key} if sweep_key else {})
        log_config(store.client, run_id, cfg, sweep_overrides)
        return cls(cfg, plan, store, run_id)

    @classmethod
    def open_for_study(cls, cfg: DictConfig, plan: RunPlan, sweep_overrides: Sequence[str], study,
                       storage: str) -> MultirunParent:
        """The one parent run of the Optuna `study` (in `storage`) in this store: the one its first search
        opened (recorded on the study), RUNNING again, or a new one. Every search on the study, and every worker
        sharing it, adds its trials there."""
        from mnist_exp.multirun.search.search_space import storage_lock

        store = connect(plan)
        kill_abandoned_runs(store)
        with storage_lock(storage, f"{study.study_name} parent run"):
            recorded = study.user_attrs.get(PARENT_ATTR) or {}
            previous = _existing_run(store, recorded.get("run_id")) if recorded.get("store") == mask(store.uri) \
                else None
            if previous is not None:
                _reopen(store.client, previous, shared=True)
                return cls(cfg, plan, store, previous.info.run_id)
            with sqlite_store_lock(store.uri):
                run_id = _create(store, sweep_overrides, {
                    run_tags.OPTUNA_STUDY_TAG: study.study_name, run_tags.OPTUNA_STORAGE_TAG: mask(storage),
                })
            study.set_user_attr(PARENT_ATTR, {"run_id": run_id, "store": mask(store.uri)})
        log_config(store.client, run_id, cfg, sweep_overrides)
        return cls(cfg, plan, store, run_id)

    def children(self) -> list:
        """The child runs that count: one per job, its best attempt when a resumed sweep ran it again."""
        from mnist_exp.multirun.grid_jobs import counted
        from mnist_exp.tracking.queries import children

        return counted(children(self.store.client, self.store.experiment_id, self.run_id))

    def close_grid(self) -> SweepSummary:
        """The children's table and plot, the best child's id and scores; FINISHED unless no job finished."""
        summary = self._log_children()
        best, client = summary.best, self.store.client
        if best is not None:
            client.log_metric(self.run_id, f"best_{self.metric}", best[f"final_{self.metric}"])
            if best.get("test_accuracy") is not None:
                client.log_metric(self.run_id, "best_child_test_accuracy", best["test_accuracy"])
        self._end(summary)
        return summary

    def close_search(self, result: SearchResult, plots: Sequence[Path], retrain: str | None) -> SweepSummary:
        """Also the search's answer: best value and params, all trials, plots; registers the best model. Under the
        study's lock: searches sharing the study, finishing together, would otherwise write the same new tags of
        their one parent at once (a SQLite store refuses the second: UNIQUE constraint failed)."""
        from mnist_exp.multirun.search.search_space import storage_lock

        with storage_lock(result.storage, f"{result.study_name} parent run"):
            return self._close_search(result, plots, retrain)

    def _close_search(self, result: SearchResult, plots: Sequence[Path], retrain: str | None) -> SweepSummary:
        from mnist_exp.tracking.logged_models import register_champion

        summary = self._log_children()
        client = self.store.client
        rows = [
            {"trial": t.number, "state": t.state, "value": t.value, "test_accuracy": t.test_accuracy,
             "model": t.model, "run_id": t.run_id, "overrides": " ".join(t.overrides), "reason": t.reason,
             "baseline": t.baseline,
             **{f"params.{k}": v for k, v in t.params.items()}}
            for t in result.trials
        ]
        if rows:
            replace_table(client, self.run_id, tables.as_columns(rows), "optuna_trials.json")
        for plot in plots:
            client.log_artifact(self.run_id, str(plot), artifact_path="plots")
        if result.objectives:
            self._log_front(result)
        best = result.best
        if best is not None:
            client.log_metric(self.run_id, "best_value", best.value)
            if best.test_accuracy is not None:
                client.log_metric(self.run_id, "best_trial_test_accuracy", best.test_accuracy)
            client.set_tag(self.run_id, "best_trial_number", str(best.number))
            if retrain:
                client.set_tag(self.run_id, "retrain_command", retrain)
            # Tags, not params: the parent of a study outlives one search, and a later best replaces them.
            stale = [key for key in client.get_run(self.run_id).data.tags
                     if key.startswith("best.") and key.removeprefix("best.") not in best.params]
            for key in stale:  # an earlier best's parameters the new one has not (a layer fewer)
                client.delete_tag(self.run_id, key)
            for key, value in best.params.items():
                client.set_tag(self.run_id, f"best.{key}", str(value))
            if result.gain is not None:
                client.log_metric(self.run_id, "baseline_value", result.baseline.value)
                client.log_metric(self.run_id, "gain_over_baseline", result.gain)
                client.set_tag(self.run_id, "baseline_trial_number", str(result.baseline.number))
            if best.run_id:
                # The name the champion's own config gave (mnist-${model.name}): a search choosing between
                # models registers a CNN as mnist-cnn, whatever model the search's command composed.
                recorded = client.get_run(best.run_id).data.params.get("mlflow.registered_model")
                summary.champion = register_champion(self.cfg, best.run_id, None if recorded == "null" else recorded,
                                                      self.store)
            else:
                summary.champion = None
            if summary.champion is not None:
                client.set_tag(self.run_id, "champion_model_version", summary.champion)
        self._end(summary)
        return summary

    def _log_front(self, result: SearchResult) -> None:
        """The Pareto front as a table, its size, and the tag optuna.pareto_front on every trial's run."""
        client = self.store.client
        rows = [{"trial": t.number, **dict(zip(result.objectives, t.values or [], strict=False)),
                 "test_accuracy": t.test_accuracy, "run_id": t.run_id, "overrides": " ".join(t.overrides)}
                for t in result.front]
        if rows:
            replace_table(client, self.run_id, tables.as_columns(rows), "pareto_front.json")
        client.log_metric(self.run_id, "pareto_front_size", len(rows))
        here = {run.info.run_id for run in self.children()}  # not runs in another store, or deleted ones
        for trial in result.trials:
            if trial.run_id in here and trial.state == "COMPLETE":  # a resumed search may move it off the front
                client.set_tag(trial.run_id, run_tags.PARETO_FRONT_TAG, str(trial.on_front).lower())

    def abandon(self) -> None:
        """KILLED, if the multirun ended without closing it."""
        with contextlib.suppress(Exception):
            client = self.store.client
            if client.get_run(self.run_id).info.status == "RUNNING":
                client.set_tag(self.run_id, run_tags.STATE_TAG, "KILLED")
                client.set_terminated(self.run_id, "KILLED")

    def _log_children(self) -> SweepSummary:
        from mnist_exp.tracking.queries import run_row

        client = self.store.client
        rows = [run_row(child) for child in self.children()]
        summary = SweepSummary(self.metric, tables.best_first(
            rows, self.metric, lambda row: row.get(f"final_{self.metric}"), tables.row_state
        ))
        if rows:
            replace_table(client, self.run_id, tables.as_columns(summary.rows), "sweep_summary.json")
            client.log_text(self.run_id, tables.sweep_table(summary.rows), "sweep_summary.txt")
            if self.cfg["plots"]:
                self._log_sweep_plot(summary.rows)
            self._log_repeats(summary)
        if summary.best is not None:
            client.set_tag(self.run_id, "best_child_run_id", summary.best["run_id"])
        client.log_metric(self.run_id, "jobs_failed", summary.failed)
        return summary

    def _log_sweep_plot(self, rows: Sequence[Mapping[str, Any]]) -> None:
        from mnist_exp.reports.plots import sweep_parameters

        with tempfile.TemporaryDirectory(prefix="mnist-exp-plots-") as folder:
            plot = sweep_parameters(Path(folder) / f"{self.metric}_by_parameter.png", rows, self.metric)
            if plot is not None:
                self.store.client.log_artifact(self.run_id, str(plot), artifact_path="plots")

    def _log_repeats(self, summary: SweepSummary) -> None:
        """Jobs that repeat a configuration over seeds: mean ± std per configuration, as a table and a plot."""
        from mnist_exp.reports import repeats

        groups = repeats.group_repeats(summary.rows, self.metric)
        if not repeats.has_repeats(groups):
            return
        summary.repeats = groups
        client = self.store.client
        replace_table(client, self.run_id, repeats.as_columns(groups), "repeats_summary.json")
        client.log_text(self.run_id, repeats.repeats_table(groups), "repeats_summary.txt")
        if self.cfg["plots"]:
            from mnist_exp.reports.plots import repeat_spread

            with tempfile.TemporaryDirectory(prefix="mnist-exp-plots-") as folder:
                plot = repeat_spread(Path(folder) / f"{self.metric}_by_configuration.png", groups, self.metric)
                if plot is not None:
                    client.log_artifact(self.run_id, str(plot), artifact_path="plots")

    def _end(self, summary: SweepSummary) -> None:
        # FINISHED when any job ran to its end (a PRUNED trial did: the pruner stopped it, it did not fail).
        finished = not summary.rows or any(tables.row_state(row) in ("COMPLETE", "PRUNED") for row in summary.rows)
        self.store.client.set_tag(self.run_id, run_tags.STATE_TAG, "COMPLETE" if finished else "FAIL")
        self.store.client.set_terminated(self.run_id, "FINISHED" if finished else "FAILED")


def _create(store: Store, sweep_overrides: Sequence[str], tags: Mapping[str, str]) -> str:
    """A new parent run named after the sweep's overrides; its id."""
    tags = {run_tags.SWEEP_TAG: "true", run_tags.OVERRIDES_TAG: mask(" ".join(sweep_overrides)),
            run_tags.OWNER_TAG: owner(), **run_tags.source_tags(), **tags}
    name = f"sweep {run_tags.run_name(sweep_overrides)}"[:run_tags.MAX_RUN_NAME_LENGTH]
    with store_writes(store.uri, "starting the sweep's parent run"):  # a server's refusal (403) is one line
        return store.client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id


def _existing_run(store: Store, run_id: str | None):
    """The run `run_id` if it is in the store's experiment and not deleted, else None."""
    if not run_id:
        return None
    try:
        run = store.client.get_run(run_id)
    except Exception:  # deleted for good, or never in this store
        return None
    live = run.info.lifecycle_stage == "active" and run.info.experiment_id == store.experiment_id
    return run if live else None


def _reopen(client, parent, shared: bool = False) -> None:
    """Make an ended parent run RUNNING again, owned by this process; ExperimentError while its sweep still
    runs elsewhere, unless the parent is `shared` (an Optuna study's, which several workers search at once)."""
    run_id, tags = parent.info.run_id, parent.data.tags
    if not shared and parent.info.status == "RUNNING" and not is_dead(tags.get(run_tags.OWNER_TAG, "")):
        raise ExperimentError(
            f"this sweep (parent run {run_id}) is still running, in process {tags.get(run_tags.OWNER_TAG)}; "
            "wait for it, or start a separate sweep with hydra.sweeper.resume=false"
        )
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, run_tags.OWNER_TAG, owner())
    for stale in (run_tags.STATE_TAG, run_tags.FAILURE_TAG):
        if stale in tags:
            with contextlib.suppress(Exception):
                client.delete_tag(run_id, stale)
