"""The whole command against the script it replaces, launch to exit, phase by phase, side by side.

    .venv/bin/python benchmarks/bench_command.py [--repeats 3] [--epochs 5] [-- extra mnist_exp overrides]

Three commands on the full Fashion-MNIST (Debian's dataset-fashion-mnist), alternating, each round in
reversed order from the last:
  seed script   benchmarks/plain_keras.py: the classic Keras MNIST MLP as users have it (float32 arrays,
                validation_split, Keras defaults), what `python -m mnist_exp` replaces
  tuned Keras   benchmarks/tuned_keras.py: bare Keras tuned exactly like the product (its dtype,
                pipeline, steps_per_execution): the difference to the product is the framework's own cost
  mnist_exp     `python -m mnist_exp data=fashion_mnist` with its defaults (MLflow, pictures, model)
Each printed line is timestamped as it arrives; the phases are: launch to the first step ("Epoch 1/"),
the first epoch, a steady epoch (median of the others), after training (the last epoch's line to the
result line) and exit (the result line to the process's end). A command that fails fails the benchmark.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PHASES = ("launch to first step", "first epoch", "steady epoch", "after training", "exit", "whole command")


@dataclass(frozen=True)
class Command:
    name: str
    argv: list[str]
    result_line: str  # how the line printed after evaluation starts
    cwd: Path = ROOT  # the checkout the command runs in (and whose mnist_exp `python -m` imports)


class BenchmarkFailed(RuntimeError):
    pass


def timed_lines(argv: list[str], cwd: Path = ROOT) -> tuple[list[tuple[float, str]], float]:
    """Each stdout line with the seconds since launch when it arrived, and the seconds until the exit."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in process.stdout]
    stderr = process.stderr.read()
    process.wait()
    ended = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchmarkFailed(f"{' '.join(argv)} exited {process.returncode}:\n{stderr[-2000:]}")
    return lines, ended


def phases(command: Command) -> dict[str, float]:
    lines, ended = timed_lines(command.argv, command.cwd)
    first_step = next(t for t, line in lines if line.startswith("Epoch 1/"))
    # Keras' one line per epoch (verbose=2): "422/422 - 3s - 7ms/step - accuracy: ... - val_loss: ..."
    epoch_ends = [t for t, line in lines if "/step - " in line and "val_loss: " in line]
    result = next(t for t, line in lines if line.startswith(command.result_line))
    if len(epoch_ends) < 3:
        raise BenchmarkFailed(f"{command.name}: expected 3 or more epoch lines, found {len(epoch_ends)}")
    epochs = [epoch_ends[0] - first_step] + [b - a for a, b in itertools.pairwise(epoch_ends)]
    return {
        "launch to first step": first_step,
        "first epoch": epochs[0],
        "steady epoch": statistics.median(epochs[1:]),
        "after training": result - epoch_ends[-1],
        "exit": ended - result,
        "whole command": ended,
    }


def commands(epochs: int, runs_dir: str, overrides: list[str]) -> list[Command]:
    return [
        Command("seed script", [PYTHON, "benchmarks/plain_keras.py", f"--epochs={epochs}"], "test accuracy"),
        Command("tuned Keras", [PYTHON, "benchmarks/tuned_keras.py", f"--epochs={epochs}"], "test accuracy"),
        Command("mnist_exp", [PYTHON, "-m", "mnist_exp", "data=fashion_mnist", f"epochs={epochs}",
                              f"runs_dir={runs_dir}", *overrides], "val_accuracy "),
    ]


def table(medians: dict[str, dict[str, float]]) -> list[str]:
    names = list(medians)
    seed = medians["seed script"]
    rows = ["| phase | " + " | ".join(names) + " | mnist_exp / seed script | mnist_exp / tuned Keras |",
            "|---|" + "---:|" * (len(names) + 2)]
    for phase in PHASES:
        cells = [f"{medians[name][phase]:.2f}" for name in names]
        product, tuned = medians["mnist_exp"][phase], medians["tuned Keras"][phase]
        rows.append(f"| {phase} (s) | " + " | ".join(cells)
                    + f" | {product / seed[phase]:.2f} | {product / tuned:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra overrides for python -m mnist_exp")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        variants = commands(args.epochs, runs_dir, args.overrides)
        timed_lines(variants[-1].argv)  # fills the data cache and creates the store, as any second run finds them
        samples: dict[str, list[dict[str, float]]] = {c.name: [] for c in variants}
        for repeat in range(args.repeats):
            for command in variants if repeat % 2 == 0 else reversed(variants):
                samples[command.name].append(phases(command))
                print(f"    {command.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in samples[command.name][-1].items()),
                      file=sys.stderr)
    medians = {name: {phase: statistics.median(s[phase] for s in runs) for phase in PHASES}
               for name, runs in samples.items()}
    print(f"Command: `.venv/bin/python benchmarks/bench_command.py --repeats {args.repeats} --epochs {args.epochs}"
          + (" " + " ".join(args.overrides) if args.overrides else "") + f"`; medians of {args.repeats}.")
    print("\n".join(table(medians)))


if __name__ == "__main__":
    try:
        main()
    except BenchmarkFailed as failure:
        sys.exit(f"benchmark failed: {failure}")
