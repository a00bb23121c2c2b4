"""Runs as `python -m mnist_exp.runs` writes them: a table of chosen columns, CSV, or JSON.

Tables round scores to 4 decimals (mnist_exp.reports.tables); CSV and JSON keep every value as the store holds it,
but for a `'` in front of CSV text a spreadsheet would run as a formula (`spreadsheet_safe`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from mnist_exp.commands.run_filters import ATTRIBUTES, MISSING, lookup
from mnist_exp.config import SIZE_METRICS
from mnist_exp.reports import tables

FORMATS = ("table", "csv", "json")
# Metrics that count things: shown whole, not with 4 decimals; durations: to a tenth of a second.
COUNTS = ("epochs_completed", "jobs_failed", *SIZE_METRICS)
SECONDS_SUFFIX = "_seconds"
# What makes a spreadsheet read a CSV cell as a formula (https://owasp.org/www-community/attacks/CSV_Injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def columns_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """One column per key, headed by the key as given; numbers right-aligned, '-' where a run has no value."""
    cells = [[table_cell(key, lookup(row, key)) for key in columns] for row in rows]
    right = [i for i, key in enumerate(columns) if any(_is_number(lookup(row, key)) for row in rows)]
    return tables.render(columns, cells, right=right)


def table_cell(key: str, value: Any) -> str:
    if value is MISSING or value is None or value == "":
        return "-"
    if _is_number(value):
        name = key.rpartition(".")[2]
        if name in COUNTS:
            return str(int(value))
        return f"{value:.1f}" if name.endswith(SECONDS_SUFFIX) else tables.score(value)
    return tables.short_number(str(value))


def as_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> str:
    """A header line of keys, then one line per run; without `columns`: the attributes, every metric
    (metrics.NAME) and every param (params.NAME)."""
    keys = list(columns) if columns else default_csv_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(map(spreadsheet_safe, keys))
    for row in rows:
        writer.writerow(["" if (value := lookup(row, key)) in (MISSING, None) else spreadsheet_safe(value)
                         for key in keys])
    return buffer.getvalue()


def spreadsheet_safe(value: Any) -> Any:
    """The cell as it goes into CSV: text that starts with = + - @ (or a tab or carriage return), which a
    spreadsheet would run as a formula, with a `'` in front (OWASP, "CSV Injection"): a run's name, params and
    tags are whatever whoever wrote the store put there. Numbers, also written as text (`-0.5`), stay."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def default_csv_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    metrics = sorted({name for row in rows for name in row.get("metrics") or {}})
    params = sorted({key for row in rows for key in row if key.startswith("params.")})
    return [*ATTRIBUTES, *(f"metrics.{name}" for name in metrics), *params]


def as_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """A list of runs, each {run_id, experiment, name, status, state, start_time, seconds, params, metrics, tags}."""
    return json.dumps([run_object(row) for row in rows], indent=2) + "\n"


def run_object(row: Mapping[str, Any]) -> dict[str, Any]:
    started = row.get("started")
    return {
        "run_id": row["run_id"], "experiment": row.get("experiment"), "name": row.get("name"),
        "status": row["status"], "state": tables.row_state(row),
        "start_time": None if started is None else datetime.fromtimestamp(started / 1000, UTC).isoformat(),
        "seconds": row.get("seconds"),
        "params": {key.removeprefix("params."): value for key, value in row.items() if key.startswith("params.")},
        "metrics": dict(row.get("metrics") or {}),
        "tags": dict(row.get("tags") or {}),
    }


def columns_csv(columns: Mapping[str, Sequence[Any]]) -> str:
    """A table given as column name -> values (mnist_exp.reports.repeats.as_columns), as CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(map(spreadsheet_safe, columns))
    writer.writerows([spreadsheet_safe(value) for value in row] for row in zip(*columns.values(), strict=True))
    return buffer.getvalue()


def columns_json(columns: Mapping[str, Sequence[Any]]) -> str:
    """A table given as column name -> values, as a JSON list of objects."""
    keys = list(columns)
    return json.dumps([dict(zip(keys, values, strict=True)) for values in zip(*columns.values(), strict=True)],
                      indent=2) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
