"""A search's cost per trial beyond training, with Hydra's basic launcher (trials one after another in one
process): config compose, model build and compile, run creation, model logging, pictures, Optuna ask/tell.

    .venv/bin/python benchmarks/bench_trials.py [--trials 20] [-- extra overrides]

Runs `python -m mnist_exp -m hparams_search=optuna data=mnist_sample epochs=1` with `--trials` trials and no
pruner, timestamps each "job N (trial N) done: ... (S s)" line as it arrives, and reports: trials per minute,
the median training time (S, what fit() took), and the overhead per trial: the time between two trials'
"done" lines minus the second one's training time (the first trial, which also pays for imports and
tracing caches, is left out). A search that fails fails the benchmark.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DONE = re.compile(r"job \d+ \(trial \d+\) done: .* \((\d+\.\d+) s\)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        argv = [sys.executable, "-m", "mnist_exp", "-m", "hparams_search=optuna", "data=mnist_sample", "epochs=1",
                f"hydra.sweeper.n_trials={args.trials}", "hydra.sweeper.pruner.name=none", f"runs_dir={runs_dir}",
                *args.overrides]
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
        done = []  # (seconds since launch, training seconds) per trial
        output = []
        for line in process.stdout:
            output.append(line)
            match = DONE.search(line.rstrip())
            if match:
                done.append((time.perf_counter() - started, float(match[1])))
        process.wait()
        wall = time.perf_counter() - started
    if process.returncode != 0 or len(done) != args.trials:
        sys.exit(f"benchmark failed: exit {process.returncode}, {len(done)} of {args.trials} trials done\n"
                 + "".join(output[-20:]))
    overheads = [later - earlier - training for (earlier, _), (later, training) in zip(done, done[1:], strict=False)]
    trainings = [training for _, training in done[1:]]
    print(f"Command: `.venv/bin/python benchmarks/bench_trials.py --trials {args.trials}`")
    print("| search of one-epoch trials, basic launcher | value |")
    print("|---|---:|")
    print(f"| trials | {args.trials} |")
    print(f"| whole command (s) | {wall:.1f} |")
    print(f"| trials per minute (first to last trial) | {60 * (len(done) - 1) / (done[-1][0] - done[0][0]):.1f} |")
    print(f"| median training time per trial (s) | {statistics.median(trainings):.2f} |")
    print(f"| median overhead per trial beyond training (s) | {statistics.median(overheads):.2f} |")
    print(f"| overhead / training | {statistics.median(overheads) / statistics.median(trainings):.2f} |")


if __name__ == "__main__":
    main()
