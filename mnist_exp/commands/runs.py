"""`python -m mnist_exp.runs`: the runs of the store, filtered, sorted, grouped over seeds, as a table, CSV or
JSON; `runs show RUN` one run in full; `runs diff RUN RUN...` what differs between runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mnist_exp.commands.arguments import OneLineParser
from mnist_exp.system.errors import ExperimentError, report

DEFAULT_LIMIT = 20
COMMANDS = ("show", "diff", "list")
# The options that take a value (the listing's and --tracking-uri): the word after one is never a command.
VALUE_OPTIONS = ("--where", "--sort", "--columns", "--format", "--limit", "--experiment", "--tracking-uri")
LIST_DESCRIPTION = "The runs of a store, filtered, sorted or grouped over seeds, as a table, CSV or JSON."
EPILOG = """\
keys (--where, --sort, --columns): run_id experiment name status state seconds, any metric (val_accuracy and
val_loss: the kept model's), any param (optimizer.name, model.hidden_units, ...), any tag; metrics., params. or
tags. in front picks one. OP: = != < <= > >= ~ (contains). Values are read as JSON: 0.01, [512], true.

other commands (options may stand before or after the command; `list` is this one):
  python -m mnist_exp.runs show RUN            a run's config, final metrics, state, dataset, model, rerun command
  python -m mnist_exp.runs diff RUN RUN [...]  only the config keys and final metrics that differ"""


def _store_option(parser: argparse.ArgumentParser) -> None:
    from mnist_exp.tracking.store import reading_uri

    parser.add_argument("--tracking-uri", default=reading_uri(),
                        help="the MLflow store or server (default: $MLFLOW_TRACKING_URI, else %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    command, arguments = _command(list(sys.argv[1:] if argv is None else argv))
    if command == "show":
        return show(arguments)
    if command == "diff":
        return diff(arguments)
    return list_runs(arguments)


def _command(argv: list[str]) -> tuple[str, list[str]]:
    """The command wherever it stands after options (`--tracking-uri X show RUN` is `show RUN --tracking-uri
    X`), and the other arguments in their order; `list` (also when none is named) lists runs."""
    index = 0
    while index < len(argv) and argv[index].startswith("-"):
        option = argv[index]
        takes_value = "=" not in option and any(name.startswith(option) for name in VALUE_OPTIONS)
        index += 2 if takes_value else 1
    if index < len(argv) and argv[index] in COMMANDS:
        return argv[index], [*argv[:index], *argv[index + 1:]]
    return "list", argv


def list_runs(argv: Sequence[str]) -> int:
    from mnist_exp.commands.run_export import FORMATS

    parser = OneLineParser(prog="python -m mnist_exp.runs", description=LIST_DESCRIPTION, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--where", action="append", default=[], metavar="KEY_OP_VALUE",
                        help="only runs where this holds, e.g. optimizer.name=sgd 'val_accuracy>0.9' (repeatable)")
    parser.add_argument("--sort", metavar="KEYS", help="order by these comma-separated keys; -KEY descending")
    parser.add_argument("--columns", metavar="KEYS", help="the table's or CSV's columns, comma-separated")
    parser.add_argument("--format", choices=FORMATS, default="table", help="(default: %(default)s)")
    parser.add_argument("--best", action="store_true",
                        help="only the best finished run of each experiment (per dataset, by its optimized_metric)")
    parser.add_argument("--group", action="store_true",
                        help="one line per configuration (every param but seed): mean ± std over its seeds")
    parser.add_argument("--limit", type=int, help=f"at most this many lines (default: {DEFAULT_LIMIT} in a table, "
                        "all in CSV and JSON); newest first unless --sort")
    parser.add_argument("--experiment", help="only this experiment")
    _store_option(parser)
    args = parser.parse_args(_sort_value_attached(argv))
    if args.limit is not None and args.limit < 1:
        return report("--limit must be at least 1")
    limit = args.limit or (DEFAULT_LIMIT if args.format == "table" else None)
    try:
        from mnist_exp.commands import run_filters
        from mnist_exp.tracking.queries import MAX_RUNS, recent_runs

        conditions = [run_filters.Condition.parse(text) for text in args.where]
        # Only a plain listing can stop at the newest few; everything else looks at every run.
        plain = not (conditions or args.sort or args.best or args.group) and limit is not None
        rows = recent_runs(args.tracking_uri, limit if plain else MAX_RUNS, args.experiment)
        if not rows and args.format == "table":
            print("no runs yet")
            return 0
        columns = [key.strip() for key in (args.columns or "").split(",") if key.strip()]
        run_filters.check_keys(rows, columns, "--columns")
        rows = run_filters.select(rows, conditions)
        if args.best:
            rows = run_filters.best_per_experiment(rows)
        if args.group:
            return _print_groups(rows, limit, args.format)
        if args.sort:
            rows = run_filters.sort_rows(rows, args.sort)
    except ExperimentError as error:
        return report(str(error))
    _print_runs(rows[:limit], columns, args.format)
    return 0


def _sort_value_attached(argv: Sequence[str]) -> list[str]:
    """`--sort -KEY` as `--sort=-KEY`: argparse takes a value starting with '-' for an option of its own."""
    argv = list(argv)
    for index, argument in enumerate(argv[:-1]):
        if argument == "--sort":
            argv[index:index + 2] = [f"--sort={argv[index + 1]}"]
            break
    return argv


def _print_runs(rows, columns: Sequence[str], output: str) -> None:
    from mnist_exp.commands import run_export
    from mnist_exp.reports import tables

    if output == "json":
        print(run_export.as_json(rows), end="")
    elif output == "csv":
        print(run_export.as_csv(rows, columns), end="")
    elif not rows:
        print("no runs match")
    elif columns:
        print(run_export.columns_table(rows, columns), end="")
    else:
        print(tables.runs_table(rows), end="")


def _print_groups(rows, limit: int | None, output: str) -> int:
    from mnist_exp.commands import run_export
    from mnist_exp.commands.run_filters import optimized_metric
    from mnist_exp.reports import repeats

    metrics = {optimized_metric(row) for row in rows}
    groups = repeats.group_repeats(rows, metrics.pop() if len(metrics) == 1 else "val_accuracy")[:limit]
    if output == "json":
        print(run_export.columns_json(repeats.as_columns(groups)), end="")
    elif output == "csv":
        print(run_export.columns_csv(repeats.as_columns(groups)), end="")
    elif not groups:
        print("no runs match")
    else:
        print(repeats.repeats_table(groups), end="")
    return 0


def show(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="python -m mnist_exp.runs show",
                           description="A run's config, final metrics, state, dataset, model URI and rerun command.")
    parser.add_argument("run", help="the run id")
    _store_option(parser)
    args = parser.parse_args(argv)
    try:
        from mnist_exp.commands.run_diff import read_runs, show_text

        (run,) = read_runs(args.tracking_uri, [args.run])
    except ExperimentError as error:
        return report(str(error))
    print(show_text(run), end="")
    return 0


def diff(argv: Sequence[str]) -> int:
    parser = OneLineParser(prog="python -m mnist_exp.runs diff",
                           description="The config keys, dataset digest and final metrics that differ between runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="two or more run ids")
    _store_option(parser)
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        return report("diff needs at least two run ids")
    try:
        from mnist_exp.commands.run_diff import diff_text, read_runs

        runs = read_runs(args.tracking_uri, args.runs)
    except ExperimentError as error:
        return report(str(error))
    print(diff_text(runs), end="")
    return 0

