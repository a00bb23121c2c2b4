"""README.md's transcripts of `python -m mnist_exp.runs` and of a sweep over seeds are what the code prints.

As in test_readme.py: the values are parsed out of each transcript, printed again by the code that prints
them in the product, and the lines compared; and what a transcript shows must follow from its command
(the rows a filter lets through, in the order the sort asks for).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import shlex
from datetime import UTC, datetime
from types import SimpleNamespace

from mnist_exp.commands import run_diff, run_export, run_filters
from mnist_exp.multirun import sweeping
from mnist_exp.multirun.parent_run import SweepSummary
from mnist_exp.reports import repeats
from mnist_exp.tracking.recorded_config import rerun_command
from tests.conftest import README, code_blocks, ui_uri


def runs_transcripts(subcommand: str | None = None) -> list[tuple[list[str], list[str]]]:
    """(the arguments after `python -m mnist_exp.runs`, the output) of each README transcript of it; only
    those of `show` or `diff` when `subcommand` names one, only listings when it is None."""
    found = []
    for block in code_blocks(README.read_text()):
        if block and block[0].startswith("$ python -m mnist_exp.runs"):
            arguments = shlex.split(block[0].removeprefix("$ "))[3:]
            if (arguments[:1] == [subcommand]) if subcommand else arguments[:1] not in (["show"], ["diff"]):
                found.append((arguments, block[1:]))
    assert found, f"no README transcript of mnist_exp.runs {subcommand or ''}"
    return found


def options(arguments: list[str]) -> dict[str, list[str]]:
    """{--option: its values} of a command line; flags (--group) get []."""
    grouped: dict[str, list[str]] = {}
    for index, argument in enumerate(arguments):
        if argument.startswith("--"):
            value = arguments[index + 1] if index + 1 < len(arguments) else "--"
            grouped.setdefault(argument, []).extend([] if value.startswith("--") else [value])
    return grouped


def is_metric(key: str) -> bool:
    """Whether a key the README's transcripts show is a final metric (the rest are params)."""
    return key.startswith(("final_", "test_")) or key.endswith("_seconds") or key in run_export.COUNTS


def row_of(columns: list[str], cells: list[str]) -> dict:
    """A run row with the values a table or CSV showed."""
    row: dict = {"metrics": {}, "tags": {}}
    for key, cell in zip(columns, cells, strict=True):
        if key in run_filters.ATTRIBUTES:
            row[key] = cell
        elif key in run_filters.FINAL_ALIASES or is_metric(key):
            row["metrics"][run_filters.FINAL_ALIASES.get(key, key)] = float(cell)
        else:
            row[f"params.{key}"] = cell
    return row


def check_selection(arguments: list[str], rows: list[dict]) -> None:
    """The rows satisfy the command's --where conditions, in the order its --sort asks for."""
    chosen = options(arguments)
    conditions = [run_filters.Condition.parse(text) for text in chosen.get("--where", [])]
    assert all(condition.holds(row) for condition in conditions for row in rows), "rows the filter lets through"
    for spec in chosen.get("--sort", []):
        assert [row["run_id"] for row in run_filters.sort_rows(rows, spec)] == [row["run_id"] for row in rows]


def test_the_runs_listings_are_what_runs_prints():
    checked = 0
    for arguments, output in runs_transcripts():
        chosen = options(arguments)
        if "--group" in arguments or "--columns" not in chosen:
            continue
        columns = chosen["--columns"][0].split(",")
        if chosen.get("--format") == ["csv"]:
            table = list(csv.reader(io.StringIO("\n".join(output) + "\n")))
            assert table[0] == columns
            rows = [row_of(columns, cells) for cells in table[1:]]
            # Full precision: the values as the store holds them, printed by the code again.
            assert run_export.as_csv(rows, columns).splitlines() == output
        else:
            assert output[0].split() == columns
            rows = [row_of(columns, line.split()) for line in output[1:]]
            assert run_export.columns_table(rows, columns).splitlines() == output
        check_selection(arguments, rows)
        checked += 1
    assert checked >= 2


def parse_spread(cell: str) -> repeats.Spread:
    mean, std = cell.split(" ± ")
    return repeats.Spread(float(mean), None if std == "-" else float(std), 0)


def parse_repeats(lines: list[str]) -> list[repeats.RepeatGroup]:
    """RepeatGroups from the lines of a repeats table (not its header)."""
    groups = []
    for line in lines:
        match = re.fullmatch(r"\s*(\d+)(?:/(\d+))?" + r"\s+(\S+ ± \S+)" * len(repeats.SCORES) + r"  (.+)", line)
        assert match, f"not a line repeats_table prints: {line!r}"
        complete = int(match[1])
        spreads = [parse_spread(match[3 + i]) for i in range(len(repeats.SCORES))]
        groups.append(repeats.RepeatGroup(
            label=match[3 + len(repeats.SCORES)], runs=int(match[2] or complete), complete=complete,
            scores={key: spread for (key, _), spread in zip(repeats.SCORES, spreads, strict=True)},
        ))
    return groups


def test_the_grouped_runs_are_what_runs_group_prints():
    ((arguments, output),) = [(a, o) for a, o in runs_transcripts() if "--group" in a]
    groups = parse_repeats(output[1:])
    assert repeats.repeats_table(groups).splitlines() == output
    means = [g.mean("final_val_accuracy") for g in groups]
    assert means == sorted(means, reverse=True), "best first by the mean of val_accuracy"


def test_the_sweep_over_seeds_ends_with_what_a_grid_sweep_prints(activated_environment, capsys):  # noqa: F811
    ((block,),) = [[b] for b in code_blocks(README.read_text()) if any(line.startswith("Repeats: ") for line in b)]
    command = shlex.split(block[0].removeprefix("$ "))
    start = next(i for i, line in enumerate(block) if line.startswith("Repeats: "))
    assert command[:3] == ["python", "-m", "mnist_exp"] and block[1:start] == ["..."]
    output = block[start:]
    table_end = next(i for i, line in enumerate(output) if line.startswith("best: "))
    groups = parse_repeats(output[2:table_end])
    best = re.fullmatch(r"best: (\w+)  \((.+)\)", output[table_end])
    rows = [{"run_id": best[1], "overrides": best[2], "state": "COMPLETE", "status": "FINISHED",
             "final_val_accuracy": 1.0, "test_accuracy": None}]
    parent = SimpleNamespace(run_id="0" * 32, store=SimpleNamespace(uri=ui_uri(output[-1])))

    sweeping.report_grid(parent, SweepSummary("val_accuracy", rows, repeats=groups))
    printed = capsys.readouterr().out.splitlines()
    assert printed[printed.index(output[0]):] == output

    grid = dict(argument.split("=", 1) for argument in command[3:] if argument != "-m")
    seeds = grid.pop("seed").split(",")
    configurations = {" ".join(f"{key}={value}" for key, value in zip(grid, values, strict=True))
                      for values in itertools.product(*(v.split(",") for v in grid.values()))}
    assert {g.label for g in groups} == configurations and all(g.runs == len(seeds) for g in groups)


def test_show_is_what_runs_show_prints():
    ((arguments, output),) = runs_transcripts("show")
    fields = dict(line.split(None, 1) for line in output[: output.index("")])
    started = re.fullmatch(r"(.+ UTC), (\S+) s", fields["started"])
    dataset = re.fullmatch(r"(\S+), digest (\S+) \(train (\d+), val (\d+), test (\d+)\)", fields["dataset"])
    state = re.fullmatch(r"(\S+) \(MLflow status (\S+)\)", fields["state"])
    config = dict(line.split(None, 1) for line in output[output.index("config") + 1: output.index("final metrics") - 1])
    metrics = {key: float(value) for key, value in
               (line.split() for line in output[output.index("final metrics") + 1:])}
    dataset_params = dict(zip(("dataset.name", "dataset.digest", "dataset.train_examples", "dataset.val_examples",
                               "dataset.test_examples"), dataset.groups(), strict=True))
    details = run_diff.RunDetails(
        run_id=fields["run"], name=fields["name"], experiment=fields["experiment"], status=state[2], state=state[1],
        started=int(datetime.strptime(started[1], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC).timestamp() * 1000),
        seconds=float(started[2]), params={**config, **dataset_params}, metrics=metrics,
        model_uris=[] if fields["model"] == "-" else fields["model"].split(", "),
    )
    assert run_diff.show_text(details).splitlines() == output
    assert fields["run"] == arguments[1]
    assert fields["reproduce"] == rerun_command(arguments[1])


def test_diff_is_what_runs_diff_prints():
    ((arguments, output),) = runs_transcripts("diff")
    run_ids = arguments[1:]
    header, *lines = output
    assert header.split() == ["key", *run_diff.column_titles(run_ids)]
    runs = [run_diff.RunDetails(run_id, "", "", "FINISHED", "COMPLETE", 0, None, {}, {}) for run_id in run_ids]
    for line in lines:
        key, *cells = line.split()
        for run, cell in zip(runs, cells, strict=True):
            if cell == "-":
                continue
            if is_metric(key):
                run.metrics[key] = float(cell)
            else:
                run.params[key] = cell
    assert run_diff.diff_text(runs).splitlines() == output
