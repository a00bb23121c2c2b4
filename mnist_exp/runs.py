"""`python -m mnist_exp.runs [--best] [--limit N]`: the recent runs of the store as a table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mnist_exp.config import store_for_reading
from mnist_exp.errors import ExperimentError

# (param, column header): what tells one run from another at a glance.
KEY_PARAMS = (
    ("dataset.name", "data"), ("optimizer.name", "optimizer"), ("optimizer.lr", "lr"), ("batch_size", "batch"),
    ("epochs", "epochs"), ("model.hidden_units", "hidden_units"),
)


def best_per_experiment(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The finished run with the highest final validation accuracy in each experiment, per dataset
    (accuracies on different datasets don't compare)."""
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        score = row.get("final_val_accuracy")
        if row["status"] != "FINISHED" or score is None:
            continue
        key = (row["experiment"], row.get("params.dataset.name", ""))
        if key not in best or score > best[key]["final_val_accuracy"]:
            best[key] = row
    return [best[key] for key in sorted(best)]


def format_runs(rows: Sequence[Mapping[str, Any]]) -> str:
    header = ["run id", "experiment", "name", "status", *(title for _, title in KEY_PARAMS),
              "val_acc", "test_acc", "seconds"]
    table = [header] + [
        [row["run_id"], row["experiment"], _cut(row["name"] or "", 32), row["state"] or row["status"],
         *(_short(row.get(f"params.{key}", "")) for key, _ in KEY_PARAMS),
         _score(row.get("final_val_accuracy")), _score(row.get("test_accuracy")), f"{row['seconds']:.1f}"]
        for row in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
                     for line in table) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_exp.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--best", action="store_true",
                        help="only the best finished run of each experiment (per dataset)")
    parser.add_argument("--limit", type=int, default=20, help="newest runs to list (default: %(default)s)")
    parser.add_argument("--experiment", help="only this experiment")
    parser.add_argument("--tracking-uri", default=store_for_reading(), help="the MLflow store (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        from mnist_exp.tracking import recent_runs

        # --best looks at every run, not only the newest.
        rows = recent_runs(args.tracking_uri, 50_000 if args.best else args.limit, args.experiment)
    except ExperimentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.best:
        rows = best_per_experiment(rows)
    if not rows:
        print("no runs yet")
        return 0
    print(format_runs(rows), end="")
    return 0


def _short(value: str) -> str:
    """Numbers to 4 significant digits (a sampled learning rate has 17)."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
