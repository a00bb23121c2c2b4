"""Parallel trials against sequential ones: 4 Optuna trials of 2 epochs on full Fashion-MNIST.

    .venv/bin/python benchmarks/bench_sweep.py [--repeats 3] [--trials 4] [--epochs 2]

Each variant runs the same trials (the sampler is seeded and all trials are in its random start-up
phase) into a fresh temporary store; variants alternate within each repeat so machine noise hits
them alike. Prints the median wall time of each and the ratios to sequential.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "sequential (1 process)": [],
    "2 workers, 1 TF thread each": ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"],
    "2 workers, TF default threads": ["hydra/launcher=joblib", "hydra.sweeper.n_jobs=2",
                                      "hydra.sweeper.threads_per_job=0"],
}


def run_search(extra: list[str], trials: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as runs_dir:
        command = [
            sys.executable, "-m", "mnist_exp", "-m", "hparams_search=optuna", "data=fashion_mnist",
            f"epochs={epochs}", f"hydra.sweeper.n_trials={trials}", "hydra.sweeper.pruner.name=none",
            f"runs_dir={runs_dir}", *extra,
        ]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    # Warm the decoded-data cache so no variant pays for decoding.
    run_search([], 1, 1)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        order = list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            times[name].append(run_search(VARIANTS[name], args.trials, args.epochs))
            print(f"  repeat {repeat + 1}: {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    baseline = statistics.median(times["sequential (1 process)"])
    print(f"{args.trials} trials x {args.epochs} epochs, Fashion-MNIST, median of {args.repeats}")
    print("| variant | wall time (s) | vs sequential |\n|---|---:|---:|")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"| {name} | {median:.1f} | {median / baseline:.2f} |")


if __name__ == "__main__":
    main()
