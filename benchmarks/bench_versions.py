"""The whole command of two checkouts side by side, phase by phase: what a change did, and nothing else.

    .venv/bin/python benchmarks/bench_versions.py BEFORE_DIR AFTER_DIR [--repeats 4] [-- extra overrides]

e.g. `git worktree add /tmp/before <commit>`, then BEFORE_DIR=/tmp/before AFTER_DIR=. Runs
`python -m mnist_exp data=fashion_mnist epochs=5` from each checkout (each imports its own mnist_exp), the
two alternating, each round in reversed order from the last, into one shared runs_dir made once beforehand;
the phases are bench_command.py's. Only the product runs, so nothing else shares the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import bench_command

PYTHON = sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in checkouts}
    with tempfile.TemporaryDirectory() as runs_dir:
        argv = [PYTHON, "-m", "mnist_exp", "data=fashion_mnist", "epochs=5", f"runs_dir={runs_dir}", *args.overrides]
        bench_command.timed_lines(argv, checkouts["before"])  # the data cache and the store, as a second run finds
        for repeat in range(args.repeats):
            for name in checkouts if repeat % 2 == 0 else reversed(checkouts):
                command = bench_command.Command(name, argv, "val_accuracy ", cwd=checkouts[name])
                samples[name].append(bench_command.phases(command))
                print(f"    {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in samples[name][-1].items()),
                      file=sys.stderr)
    print(f"Command: `.venv/bin/python benchmarks/bench_versions.py BEFORE AFTER --repeats {args.repeats}"
          + "".join(f" {o}" for o in args.overrides) + f"`; medians of {args.repeats}.")
    print("| phase | before | after | after / before |")
    print("|---|---:|---:|---:|")
    for phase in bench_command.PHASES:
        before, after = (statistics.median(run[phase] for run in samples[name]) for name in checkouts)
        print(f"| {phase} (s) | {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    try:
        main()
    except bench_command.BenchmarkFailed as failure:
        sys.exit(f"benchmark failed: {failure}")
