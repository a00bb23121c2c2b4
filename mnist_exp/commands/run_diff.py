"""`runs show RUN` and `runs diff RUN RUN...`: one run in full, or only what differs between runs.

A run's config is its params but the `dataset.*` ones, which describe the data it loaded; its final
metrics are those logged once at its end (mnist_exp.tracking.queries.final_metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mnist_exp.reports import tables
from mnist_exp.system.errors import ExperimentError, first_line
from mnist_exp.tracking import run_tags

ID_PREFIX = 8  # characters of a run id that head a diff's column


@dataclass
class RunDetails:
    """What `show` and `diff` print of one run, read from the store once."""

    run_id: str
    name: str
    experiment: str
    status: str
    state: str
    started: int  # ms since the epoch
    seconds: float | None
    params: dict[str, str]
    metrics: dict[str, float]
    failure: str = ""
    model_uris: list[str] = field(default_factory=list)
    deleted: bool = False
    store_uri: str | None = None
    # Why `python -m mnist_exp.rerun` cannot train this run again (None: it can).
    cannot_rerun: str | None = None

    @property
    def config(self) -> dict[str, str]:
        return {key: value for key, value in self.params.items() if not key.startswith("dataset.")}

    @property
    def dataset(self) -> dict[str, str]:
        return {key.removeprefix("dataset."): value for key, value in self.params.items()
                if key.startswith("dataset.")}


def read_runs(uri: str, run_ids: Sequence[str]) -> list[RunDetails]:
    """The runs `run_ids` of the store at `uri`; one ExperimentError for the first that is not there."""
    from mnist_exp.tracking.store import open_store, store_writes

    client = open_store(uri)
    with store_writes(uri, "reading its runs"):  # a server that stops answering mid-way: one line
        return [_details(client, uri, run_id) for run_id in run_ids]


def _details(client, uri: str, run_id: str) -> RunDetails:
    from mnist_exp.tracking.queries import final_metrics

    run = _get_run(client, uri, run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    ended = run.info.end_time
    deleted = run.info.lifecycle_stage == "deleted"
    return RunDetails(
        run_id=run.info.run_id, name=run.info.run_name or "", experiment=experiment.name,
        status=run.info.status, state=tables.row_state({"state": run.data.tags.get(run_tags.STATE_TAG, ""),
                                                       "status": run.info.status}),
        started=run.info.start_time, seconds=None if not ended else (ended - run.info.start_time) / 1000,
        params=dict(sorted(run.data.params.items())), metrics=final_metrics(run),
        failure=run.data.tags.get(run_tags.FAILURE_TAG, ""),
        model_uris=_model_uris(client, run),
        deleted=deleted, store_uri=uri, cannot_rerun=_why_no_rerun(client, run, deleted),
    )


def _why_no_rerun(client, run, deleted: bool) -> str | None:
    """Why a rerun of `run` cannot work, in the words `rerun` would say it; None when it can."""
    if deleted:
        return "deleted: restore it first (mlflow runs restore)"
    if run.data.tags.get(run_tags.SWEEP_TAG) == "true":
        return "a sweep's parent run: rerun one of its jobs"
    try:
        recorded = {info.path for info in client.list_artifacts(run.info.run_id)}
    except Exception as error:  # an artifact store that cannot be listed from here
        return f"its artifacts cannot be listed: {first_line(str(error))}"
    missing = [name for name in ("config.yaml", "overrides.txt") if name not in recorded]
    return f"it has no {' and no '.join(missing)}" if missing else None


def _get_run(client, uri: str, run_id: str):
    from mlflow.exceptions import MlflowException

    from mnist_exp.tracking.store import names_no_run

    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if not names_no_run(error):
            raise  # the store failing, not the run missing
        raise ExperimentError(f"no run {run_id} in {uri}; `python -m mnist_exp.runs` lists them") from None


def _model_uris(client, run) -> list[str]:
    from mnist_exp.tracking.logged_models import logged_models

    try:
        return [model.model_uri for model in logged_models(client, run.info.experiment_id, run.info.run_id)]
    except Exception:  # a server without logged models (MLflow 2): no model to name
        return []


def show_text(run: RunDetails) -> str:
    """The run's identity, state, dataset, model and the command that reproduces it; then its config and
    final metrics, one per line."""
    started = datetime.fromtimestamp(run.started / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    data = run.dataset
    sizes = ", ".join(f"{split} {data[f'{split}_examples']}" for split in ("train", "val", "test")
                      if f"{split}_examples" in data)
    heading = [
        ("run", run.run_id), ("name", run.name), ("experiment", run.experiment),
        ("state", ("deleted, " if run.deleted else "") + f"{run.state} (MLflow status {run.status})"
         + (f": {run.failure}" if run.failure else "")),
        ("started", started + ("" if run.seconds is None else f", {run.seconds:.1f} s")),
        ("dataset", f"{data.get('name', '-')}, digest {data.get('digest', '-')}" + (f" ({sizes})" if sizes else "")),
        ("model", ", ".join(run.model_uris) or "-"),
        ("reproduce", _rerun_command(run) if run.cannot_rerun is None else f"- (cannot be rerun: {run.cannot_rerun})"),
    ]
    lines = _aligned(heading, indent="")
    lines += ["", "config", *_aligned(list(run.config.items()))]
    lines += ["", "final metrics", *_aligned([(key, metric_cell(key, value)) for key, value in run.metrics.items()])]
    return "\n".join(lines) + "\n"


def _rerun_command(run: RunDetails) -> str:
    from mnist_exp.tracking.recorded_config import rerun_command

    path = run.params.get("data.path", "null")
    return rerun_command(run.run_id, run.store_uri, None if path == "null" else path)


def diff_text(runs: Sequence[RunDetails]) -> str:
    """The config keys, dataset digest and final metrics whose values differ between `runs`, side by side,
    one column per run; a sentence when nothing differs."""
    rows = _differing(runs, "config", lambda run, key: run.config.get(key), lambda key, v: str(v))
    rows += _differing(runs, "dataset", lambda run, key: run.dataset.get(key), lambda key, v: str(v),
                      only=("digest",))
    rows += _differing(runs, "metrics", lambda run, key: run.metrics.get(key), metric_cell)
    if not rows:
        return f"the {len(runs)} runs have the same config, dataset and final metrics\n"
    return tables.render(["key", *column_titles([run.run_id for run in runs])], rows)


def column_titles(run_ids: Sequence[str]) -> list[str]:
    """Each run id cut to ID_PREFIX characters, or whole when the cut ones would clash."""
    short = [run_id[:ID_PREFIX] for run_id in run_ids]
    return short if len(set(short)) == len(set(run_ids)) else list(run_ids)


def metric_cell(key: str, value: float | None) -> str:
    from mnist_exp.commands.run_export import table_cell

    return table_cell(key, value)


def _differing(runs: Sequence[RunDetails], part: str, value, cell, only: Sequence[str] | None = None) -> list:
    keys = list(only) if only else sorted({key for run in runs for key in getattr(run, part)})
    rows = []
    for key in keys:
        values = [value(run, key) for run in runs]
        if len({_comparable(v) for v in values}) > 1:
            title = f"dataset.{key}" if part == "dataset" else key
            rows.append([title, *("-" if v is None else cell(key, v) for v in values)])
    return rows


def _comparable(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _aligned(pairs: Sequence[tuple[str, Any]], indent: str = "  ") -> list[str]:
    width = max((len(key) for key, _ in pairs), default=0)
    return [f"{indent}{key.ljust(width)}  {value}".rstrip() for key, value in pairs]
