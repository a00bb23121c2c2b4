"""Reading the store: a run as a table row, the children of a sweep, the newest runs. Writes nothing."""

from __future__ import annotations

import time
from typing import Any

from mnist_exp.config import SIZE_METRICS
from mnist_exp.system.errors import ExperimentError
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.store import open_store, store_writes

PAGE_SIZE = 1000
MAX_CHILDREN = 50_000
MAX_RUNS = 50_000
# Logged at every epoch (mnist_exp.training.train): their last value is no final score.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second",
                 "learning_rate")


def run_row(run) -> dict[str, Any]:
    """A run as a flat row: ids, status and state, final scores, failure, and every param as params.<key>."""
    metrics = run.data.metrics
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "state": run.data.tags.get(run_tags.STATE_TAG, ""),
        "overrides": run.data.tags.get(run_tags.OVERRIDES_TAG, ""),
        "final_val_accuracy": metrics.get("final_val_accuracy"),
        "final_val_loss": metrics.get("final_val_loss"),
        "test_accuracy": metrics.get("test_accuracy"),
        "test_loss": metrics.get("test_loss"),
        "epochs": metrics.get("epochs_completed"),
        # Final as soon as it is logged: a sweep optimising the model's size ranks its jobs by final_<metric>.
        **{f"final_{name}": metrics.get(name) for name in SIZE_METRICS},
        "failure": run.data.tags.get(run_tags.FAILURE_TAG, ""),
        **{f"params.{key}": value for key, value in sorted(run.data.params.items())},
    }


def children(client, experiment_id: str, parent_run_id: str) -> list:
    """The runs whose parent is `parent_run_id`."""
    return client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=MAX_CHILDREN
    )


def recent_runs(uri: str, limit: int, experiment: str | None = None) -> list[dict[str, Any]]:
    """The newest training runs (not sweep parents), newest first, as rows with experiment, name, seconds, and
    every metric (its last value) and tag under `metrics` and `tags`."""
    client = open_store(uri)
    with store_writes(uri, "reading its runs"):  # a server that stops answering, or answers garbage, mid-way
        experiments = [e for e in client.search_experiments() if experiment is None or e.name == experiment]
        if experiment is not None and not experiments:
            raise ExperimentError(f"no experiment named {experiment} in {uri}")
        names = {e.experiment_id: e.name for e in experiments}
        runs, page_token = [], None
        while names and len(runs) < limit:
            page = client.search_runs(
                list(names), order_by=["attributes.start_time DESC"], max_results=PAGE_SIZE, page_token=page_token
            )
            runs += [run for run in page if run.data.tags.get(run_tags.SWEEP_TAG) != "true"]
            page_token = page.token
            if not page_token:
                break
    rows = []
    for run in runs[:limit]:
        row = run_row(run)
        ended = run.info.end_time or int(time.time() * 1000)
        row.update(experiment=names[run.info.experiment_id], name=run.info.run_name,
                   seconds=(ended - run.info.start_time) / 1000, started=run.info.start_time,
                   metrics=dict(run.data.metrics), tags=dict(run.data.tags))
        rows.append(row)
    return rows


def final_metrics(run) -> dict[str, float]:
    """A run's metrics logged once at its end (test and kept-model scores, epochs, seconds), by name."""
    return {key: value for key, value in sorted(run.data.metrics.items()) if key not in EPOCH_METRICS}
