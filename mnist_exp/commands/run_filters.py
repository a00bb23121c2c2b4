"""What `python -m mnist_exp.runs` selects: `--where KEY OP VALUE` filters, `--sort` keys, `--best` per experiment.

A key names a run's attribute (run_id, experiment, name, status, state, seconds), a metric, a param or a tag,
looked up in that order; `metrics.`, `params.` or `tags.` in front picks one place. `val_accuracy` and
`val_loss` are the kept model's scores (final_val_accuracy, final_val_loss); `metrics.val_accuracy` is the
last epoch's.
Values are read as JSON where they parse (`0.01`, `[512]`, `true`), else as text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from mnist_exp.reports import tables
from mnist_exp.system.errors import ExperimentError

ATTRIBUTES = ("run_id", "experiment", "name", "status", "state", "seconds")
# A metric name that means the kept model's score (early stopping may have restored an earlier epoch).
FINAL_ALIASES = {"val_accuracy": "final_val_accuracy", "val_loss": "final_val_loss"}
PLACES = ("metrics", "params", "tags")
OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")  # two-character ones first: `<=` is not `<` then `=...`
ORDERED = ("<", "<=", ">", ">=")
DEFAULT_METRIC = "val_accuracy"
MISSING = object()
_WHERE = re.compile(r"^\s*(?P<key>[^!<>=~\s]+)\s*(?P<op>!=|<=|>=|=|<|>|~)(?P<value>.*)$")


def lookup(row: Mapping[str, Any], key: str) -> Any:
    """The value `key` names in a run row (queries.recent_runs), or MISSING."""
    place, _, name = key.partition(".")
    if place in PLACES and name:
        return _in_place(row, place, name)
    if key in ATTRIBUTES:
        return row.get(key, MISSING)
    if key in FINAL_ALIASES:  # never the last epoch's value in its place: a failed run has no score
        return (row.get("metrics") or {}).get(FINAL_ALIASES[key], MISSING)
    for place in PLACES:
        found = _in_place(row, place, key)
        if found is not MISSING:
            return found
    return MISSING


def _in_place(row: Mapping[str, Any], place: str, name: str) -> Any:
    if place == "params":
        return row.get(f"params.{name}", MISSING)
    return (row.get(place) or {}).get(name, MISSING)


def known_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key the rows answer to: attributes, then metrics, params and tags, each sorted."""
    metrics = {name for row in rows for name in row.get("metrics") or {}}
    metrics |= {alias for alias, final in FINAL_ALIASES.items() if final in metrics}
    params = {key.removeprefix("params.") for row in rows for key in row if key.startswith("params.")}
    tags = {name for row in rows for name in row.get("tags") or {}}
    return [*ATTRIBUTES, *sorted(metrics), *sorted(params - metrics), *sorted(tags - params - metrics)]


def check_keys(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], option: str) -> None:
    """One ExperimentError naming the first key no row has, and listing those that exist (none: no rows)."""
    if not rows:
        return
    for key in keys:
        if not any(lookup(row, key) is not MISSING for row in rows):
            raise ExperimentError(f"{option}: no run has a key {key!r}; keys: {', '.join(known_keys(rows))}")


@dataclass(frozen=True)
class Condition:
    """One `--where KEY OP VALUE`."""

    key: str
    operator: str
    value: Any
    text: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _WHERE.match(text)
        if match is None:
            raise ExperimentError(f"--where {text!r}: expected KEY OP VALUE, OP one of {' '.join(OPERATORS)}")
        key, operator, raw = match["key"], match["op"], match["value"].strip()
        if raw[:1] in ("<", ">", "=", "!", "~"):
            raise ExperimentError(f"--where {text!r}: bad operator {operator + raw[0]!r}; "
                                  f"use one of {' '.join(OPERATORS)}")
        value = parse_value(raw)
        if operator in ORDERED and not _is_number(value):
            raise ExperimentError(f"--where {text!r}: {operator} compares numbers, and {raw!r} is not one")
        return cls(key, operator, value, text)

    def check_comparable(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """ExperimentError when `<`, `<=`, `>` or `>=` meets a key that holds text in every run that has it
        (`name<3`): it would match nothing, without a word."""
        if self.operator not in ORDERED:
            return
        found = [value for row in rows if (value := lookup(row, self.key)) not in (MISSING, None)]
        if found and not any(_is_number(parse_value(v) if isinstance(v, str) else v) for v in found):
            raise ExperimentError(f"--where {self.text!r}: {self.operator} compares numbers, and {self.key} holds "
                                  f"text (e.g. {str(found[0])!r}); compare text with = != or ~")

    def holds(self, row: Mapping[str, Any]) -> bool:
        found = lookup(row, self.key)
        if found is MISSING:
            return False
        value = parse_value(found) if isinstance(found, str) else found
        if self.operator == "=":
            return _equal(value, self.value)
        if self.operator == "!=":
            return not _equal(value, self.value)
        if self.operator == "~":
            return str(self.value) in str(found)
        if not _is_number(value):
            return False
        return {"<": value < self.value, "<=": value <= self.value,
                ">": value > self.value, ">=": value >= self.value}[self.operator]


def parse_value(text: str) -> Any:
    """A param or filter value as JSON when it parses (numbers, lists, booleans), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def select(rows: Sequence[Mapping[str, Any]], conditions: Sequence[Condition]) -> list[Mapping[str, Any]]:
    """The rows every condition holds for; an unknown key is an error, not an empty answer."""
    check_keys(rows, [condition.key for condition in conditions], "--where")
    for condition in conditions:
        condition.check_comparable(rows)
    return [row for row in rows if all(condition.holds(row) for condition in conditions)]


def sort_rows(rows: Sequence[Mapping[str, Any]], spec: str) -> list[Mapping[str, Any]]:
    """Rows ordered by `spec`: comma-separated keys, `-` in front for descending; runs without a value last."""
    keys = [key.strip() for key in spec.split(",") if key.strip()]
    check_keys(rows, [key.removeprefix("-") for key in keys], "--sort")
    ordered = list(rows)
    for key in reversed(keys):  # least significant first: each stable pass keeps the order of ties
        name = key.removeprefix("-")
        present = [row for row in ordered if lookup(row, name) not in (MISSING, None)]
        missing = [row for row in ordered if lookup(row, name) in (MISSING, None)]
        present.sort(key=lambda row, n=name: _sort_key(lookup(row, n)), reverse=key.startswith("-"))
        ordered = present + missing
    return ordered


def best_per_experiment(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The best complete run of each experiment, per dataset and optimised metric (scores on different
    datasets don't compare, and a val_loss search is won by the lowest loss)."""
    def group(row: Mapping[str, Any]) -> tuple[str, str, str]:
        return row["experiment"], row.get("params.dataset.name", ""), optimized_metric(row)

    winners = []
    for (_, _, metric), members in groupby(sorted(rows, key=group), key=group):
        winner = tables.best(members, metric, lambda row, m=metric: row.get(f"final_{m}"), tables.row_state)
        if winner is not None:
            winners.append(winner)
    return winners


def optimized_metric(row: Mapping[str, Any]) -> str:
    """The metric that picks a run's best (the first objective of a search of several)."""
    value = row.get("params.optimized_metric") or DEFAULT_METRIC
    return json.loads(value)[0] if value.startswith("[") else value


def _equal(value: Any, wanted: Any) -> bool:
    if _is_number(value) and _is_number(wanted):
        return float(value) == float(wanted)
    return value == wanted or str(value) == str(wanted)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sort_key(value: Any) -> tuple[int, Any]:
    parsed = parse_value(value) if isinstance(value, str) else value
    return (0, float(parsed)) if _is_number(parsed) else (1, str(value))
