"""Runs that repeat one configuration over seeds, grouped: mean and standard deviation of their final scores.

A configuration is every param of a run except the ones that only choose a repeat (`seed`, and `repeats`,
the count a config asks for): runs that differ in nothing else are one configuration. Used by a sweep's
summary (mnist_exp.multirun.parent_run) and by `python -m mnist_exp.runs --group`. Only COMPLETE runs are averaged.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_exp.reports import tables

# Params that tell repeats of one configuration apart, not configurations.
REPEAT_PARAMS = ("seed", "repeats")
# (row key, table header): the final validation and test scores a group summarises.
SCORES = (
    ("final_val_accuracy", "val_acc"), ("final_val_loss", "val_loss"),
    ("test_accuracy", "test_acc"), ("test_loss", "test_loss"),
)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one score over the complete runs of a group (std None for one)."""

    mean: float
    std: float | None
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))

    def __str__(self) -> str:
        return f"{tables.score(self.mean)} ± {tables.score(self.std)}"


@dataclass
class RepeatGroup:
    """One configuration: its label, its runs, and the spread of each score (by row key) over the complete ones."""

    label: str
    runs: int
    complete: int
    scores: dict[str, Spread | None] = field(default_factory=dict)
    run_ids: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)

    def mean(self, key: str) -> float | None:
        spread = self.scores.get(key)
        return None if spread is None else spread.mean

    @property
    def state(self) -> str:
        # What best_first ranks by: a group with no complete run never heads the table.
        return tables.COMPLETE if self.complete else "FAIL"


def configuration(row: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The params of a run row that make its configuration (all but REPEAT_PARAMS)."""
    return tuple(sorted(
        (key, value) for key, value in row.items()
        if key.startswith("params.") and key.removeprefix("params.") not in REPEAT_PARAMS
    ))


def group_repeats(rows: Iterable[Mapping[str, Any]], metric: str) -> list[RepeatGroup]:
    """The configurations of `rows`, best first by the mean of final `metric`, each labelled by what tells it
    from the others."""
    members: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        members.setdefault(configuration(row), []).append(row)
    labels = _labels(list(members.items()))
    groups = []
    for runs, label in zip(members.values(), labels, strict=True):
        complete = [row for row in runs if tables.row_state(row) == tables.COMPLETE]
        groups.append(RepeatGroup(
            label=label, runs=len(runs), complete=len(complete),
            scores={score: Spread.of([row[score] for row in complete if row.get(score) is not None])
                    for score, _ in SCORES},
            run_ids=[row["run_id"] for row in runs],
            seeds=[str(row.get("params.seed", "")) for row in runs],
        ))
    return tables.best_first(groups, metric, lambda group: group.mean(f"final_{metric}"), lambda group: group.state)


def has_repeats(groups: Sequence[RepeatGroup]) -> bool:
    """Whether some configuration ran more than once (a sweep over seeds, a config with repeats=N)."""
    return any(group.runs > 1 for group in groups)


def repeats_table(groups: Sequence[RepeatGroup]) -> str:
    """One line per configuration: seeds averaged (of how many runs), mean ± std of each score, the label."""
    return tables.render(
        ["seeds", *(title for _, title in SCORES), "configuration"],
        ([seeds_cell(group.complete, group.runs),
          *(str(group.scores[key]) if group.scores.get(key) else "-" for key, _ in SCORES), group.label]
         for group in groups),
        right=tuple(range(len(SCORES) + 1)),
    )


def seeds_cell(complete: int, runs: int) -> str:
    """'3', or '2/3' when one of three runs did not complete (only complete runs are averaged)."""
    return str(complete) if complete == runs else f"{complete}/{runs}"


def as_columns(groups: Sequence[RepeatGroup]) -> dict[str, list[Any]]:
    """The groups as an MLflow table (column name -> values), for the sweep parent's repeats_summary.json."""
    columns: dict[str, list[Any]] = {"configuration": [g.label for g in groups], "runs": [g.runs for g in groups],
                                     "complete": [g.complete for g in groups]}
    for key, _ in SCORES:
        columns[f"{key}_mean"] = [g.mean(key) for g in groups]
        columns[f"{key}_std"] = [g.scores[key].std if g.scores.get(key) else None for g in groups]
    columns["seeds"] = [" ".join(g.seeds) for g in groups]
    columns["run_ids"] = [" ".join(g.run_ids) for g in groups]
    return columns


def _labels(groups: Sequence[tuple[tuple, list[Mapping[str, Any]]]]) -> list[str]:
    """Per configuration: the overrides its runs share without the seed (what a sweep's table shows), else
    the params that differ between configurations, else 'all runs'."""
    labels = []
    varying = _varying_params([dict(key) for key, _ in groups])
    for key, runs in groups:
        overrides = {_without_repeat_overrides(row.get("overrides", "")) for row in runs}
        if len(overrides) == 1 and (shared := overrides.pop()):
            labels.append(shared)
        else:
            params = dict(key)
            labels.append(" ".join(f"{name.removeprefix('params.')}={tables.short_number(str(params.get(name, '')))}"
                                   for name in varying) or "all runs")
    return labels


def _varying_params(configurations: Sequence[Mapping[str, Any]]) -> list[str]:
    names = sorted({name for config in configurations for name in config})
    return [name for name in names if len({config.get(name) for config in configurations}) > 1]


def _without_repeat_overrides(overrides: str) -> str:
    return " ".join(o for o in overrides.split() if o.lstrip("+~").split("=", 1)[0] not in REPEAT_PARAMS)
