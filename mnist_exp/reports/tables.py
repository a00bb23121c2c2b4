"""Every text table mnist-exp prints or logs: one score format, one column layout, one "best first" order.

"Best first" follows the optimised metric's direction (val_accuracy up, val_loss down); only
complete work (state COMPLETE) can rank as best: a pruned or failed run never heads a table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from mnist_exp.config import SIZE_METRICS, direction

T = TypeVar("T")
COMPLETE = "COMPLETE"
# Characters that would break a table's line or drive the terminal: C0 and C1 controls, DEL, Unicode's line
# and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def score(value: float | None) -> str:
    """A metric as tables show it: 4 decimals, '-' when there is none."""
    return "-" if value is None else f"{value:.4f}"


def short_number(value: str) -> str:
    """A param value with numbers cut to 4 significant digits (a sampled learning rate has 17)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def best_first(items: Iterable[T], metric: str, value: Callable[[T], float | None],
               state: Callable[[T], str]) -> list[T]:
    """`items` ordered best first by `metric`'s direction; incomplete ones and ones without a value last."""
    sign = -1.0 if direction(metric) == "maximize" else 1.0

    def key(item: T) -> tuple[bool, float]:
        number = value(item)
        return state(item) != COMPLETE or number is None, sign * (number or 0.0)

    return sorted(items, key=key)


def best(items: Iterable[T], metric: str, value: Callable[[T], float | None], state: Callable[[T], str]) -> T | None:
    """The best complete item, or None."""
    ordered = best_first(items, metric, value, state)
    return ordered[0] if ordered and state(ordered[0]) == COMPLETE and value(ordered[0]) is not None else None


def render(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell (those in `right` aligned right), two spaces apart; a trailing newline."""
    table = [[printable(cell) for cell in header]] + [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) if i in right else cell.ljust(width)
                  for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip()
        for line in table
    ]
    return "\n".join(lines) + "\n"


def printable(value: Any) -> str:
    """A cell on one line: newlines, tabs and other control characters (a terminal's escape sequences too)
    written as escapes (`\\n`, `\\x1b`), so a run named with one cannot break or repaint a table."""
    return _CONTROL.sub(lambda found: _escape(found[0]), str(value))


def _escape(character: str) -> str:
    if character in _ESCAPES:
        return _ESCAPES[character]
    return f"\\x{ord(character):02x}" if ord(character) < 0x100 else f"\\u{ord(character):04x}"


def row_state(row: Mapping[str, Any]) -> str:
    """A run row's state: the mnist_exp.state tag, or MLflow's status for runs recorded without it."""
    return row.get("state") or {"FINISHED": COMPLETE, "FAILED": "FAIL"}.get(row["status"], row["status"])


def sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The jobs of a sweep: state, validation and test accuracy, model, run id, overrides."""
    return render(
        ["state", "val_acc", "test_acc", "model", "run id", "overrides"],
        ([row_state(row), score(row.get("final_val_accuracy")), score(row.get("test_accuracy")),
          row.get("params.model.name") or "-", row["run_id"], row["overrides"]] for row in rows),
        right=(1, 2),
    )


# (param, column header): what tells one run from another at a glance.
KEY_PARAMS = (
    ("dataset.name", "data"), ("optimizer.name", "optimizer"), ("optimizer.lr", "lr"), ("batch_size", "batch"),
    ("epochs", "epochs"), ("model.name", "model"), ("model.hidden_units", "hidden_units"), ("model.filters", "filters"),
)


def runs_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Runs of a store: id, experiment, name, state, key params, validation and test accuracy, seconds."""
    return render(
        ["run id", "experiment", "name", "state", *(title for _, title in KEY_PARAMS), "val_acc", "test_acc",
         "seconds"],
        ([row["run_id"], row["experiment"], _cut(printable(row["name"] or ""), 32), row_state(row),
          *(short_number(row.get(f"params.{key}", "")) for key, _ in KEY_PARAMS),
          score(row.get("final_val_accuracy")), score(row.get("test_accuracy")), f"{row['seconds']:.1f}"]
         for row in rows),
    )


def trials_table(trials: Sequence[Any], metric: str, objectives: Sequence[str] = ()) -> str:
    """The trials of a study (search_result.TrialOutcome), best first: number, state, value, test accuracy;
    with several `objectives`, a column for each and `*` on the Pareto front."""
    ordered = best_first(trials, metric, lambda t: t.value, lambda t: t.state)
    header = [*objectives, "front"] if objectives else [metric]

    def values(trial: Any) -> list[str]:
        if not objectives:
            return [score(trial.value)]
        found = trial.values or [None] * len(objectives)
        return [*(objective_value(name, value) for name, value in zip(objectives, found, strict=True)),
                "*" if trial.on_front else ""]

    return render(
        ["trial", "state", *header, "test_acc", "model", "overrides"],
        ([t.number, t.state, *values(t), score(t.test_accuracy), t.model or "-",
          " ".join(t.overrides) + ("  [baseline]" if t.baseline else "") + (f"  [{t.reason}]" if t.reason else "")]
         for t in ordered),
        right=(0, *range(2, 3 + len(header))),
    )


def objective_value(metric: str, value: float | None) -> str:
    """A score with 4 decimals; a count (parameters, multiply-adds) as a whole number."""
    if value is None or metric not in SIZE_METRICS:
        return score(value)
    return f"{int(value):,}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def as_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows as a table of columns (name -> values, in first-seen order), as MlflowClient.log_table takes it."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return {key: [row.get(key) for row in rows] for key in keys}
