"""`python -m mnist_exp.runs [--best] [--limit N]`: the recent runs of the store as a table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from mnist_exp.errors import ExperimentError, report

DEFAULT_METRIC = "val_accuracy"


def best_per_experiment(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The best complete run of each experiment, per dataset and optimised metric (scores on different
    datasets don't compare, and a val_loss search is won by the lowest loss)."""
    from mnist_exp import tables

    def group(row: Mapping[str, Any]) -> tuple[str, str, str]:
        return row["experiment"], row.get("params.dataset.name", ""), _metric(row)

    winners = []
    for (_, _, metric), members in groupby(sorted(rows, key=group), key=group):
        winner = tables.best(members, metric, lambda row, m=metric: row.get(f"final_{m}"), tables.row_state)
        if winner is not None:
            winners.append(winner)
    return winners


def _metric(row: Mapping[str, Any]) -> str:
    return row.get("params.optimized_metric") or DEFAULT_METRIC


def main(argv: Sequence[str] | None = None) -> int:
    from mnist_exp.store import reading_uri

    parser = argparse.ArgumentParser(prog="python -m mnist_exp.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--best", action="store_true",
                        help="only the best finished run of each experiment (per dataset, by its optimized_metric)")
    parser.add_argument("--limit", type=int, default=20, help="newest runs to list (default: %(default)s)")
    parser.add_argument("--experiment", help="only this experiment")
    parser.add_argument("--tracking-uri", default=reading_uri(), help="the MLflow store (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    try:
        from mnist_exp.queries import recent_runs

        # --best looks at every run, not only the newest.
        rows = recent_runs(args.tracking_uri, 50_000 if args.best else args.limit, args.experiment)
    except ExperimentError as error:
        return report(str(error))
    if args.best:
        rows = best_per_experiment(rows)
    if not rows:
        print("no runs yet")
        return 0
    from mnist_exp.tables import runs_table

    print(runs_table(rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
