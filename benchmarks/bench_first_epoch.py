"""Where the first epoch's extra time goes: Keras' tracing, and the MLflow run opened beside it.

    .venv/bin/python benchmarks/bench_first_epoch.py [--repeats 3] [--epochs 3]

Two measurements on the full Fashion-MNIST:
  bare Keras   the product's model, optimizer, pipeline and steps_per_execution in this process, no tracking:
               seconds from fit() to the end of the first training execution (tracing the training function
               and running its first 32 steps), to the start of validation, and each epoch's length
  opening      `python -m mnist_exp data=fashion_mnist plots=false mlflow.log_model=false` with the MLflow run
               opened beside the first epoch (as the product does) and opened before training (a patched
               copy), alternating: each one's first epoch, its second, and the whole process
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI with the MLflow run opened before training when asked: the thread that opens it runs at once.
OPENING_DRIVER = """
import runpy, sys, threading
import mnist_exp.tracking.run_record as run_record
before = sys.argv.pop(1) == "before"
class Thread(threading.Thread):
    def start(self):
        if before and self.name == "open-mlflow-run":
            self.run()
            self.run = lambda: None
        super().start()
run_record.threading = type("threading", (), {"Thread": Thread})
runpy.run_module("mnist_exp", run_name="__main__", alter_sys=True)
"""


def bare_keras(epochs: int) -> dict[str, float]:
    import keras
    from bench_training import product_model

    cfg, _, model, batches = product_model([])
    marks: dict[str, float] = {}
    epoch_ends: list[float] = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.setdefault("first training execution", time.perf_counter() - started)

        def on_test_begin(self, logs=None):
            marks.setdefault("first epoch's training steps", time.perf_counter() - started)

        def on_epoch_end(self, epoch, logs=None):
            epoch_ends.append(time.perf_counter() - started)

    started = time.perf_counter()
    model.fit(batches.train(cfg.batch_size), epochs=epochs, validation_data=batches.val(cfg.batch_size),
              shuffle=False, verbose=0, callbacks=[Marks()])
    lengths = [epoch_ends[0]] + [b - a for a, b in zip(epoch_ends, epoch_ends[1:], strict=False)]
    return {**marks, "first epoch": lengths[0], "steady epoch": statistics.median(lengths[1:])}


def opening(when: str, runs_dir: str, epochs: int) -> dict[str, float]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", OPENING_DRIVER, when, "data=fashion_mnist", f"epochs={epochs}", "plots=false",
         "mlflow.log_model=false", f"runs_dir={runs_dir}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    whole = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmark failed: the run exited {result.returncode}:\n{result.stderr[-2000:]}")
    import sqlite3

    with sqlite3.connect(f"{runs_dir}/mlflow.db") as database:
        (run_id,) = database.execute("SELECT run_uuid FROM runs ORDER BY start_time DESC LIMIT 1").fetchone()
        epochs_s = [value for (value,) in database.execute(
            "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'epoch_seconds' ORDER BY step", (run_id,))]
    return {"first epoch": epochs_s[0], "second epoch": epochs_s[1] if len(epochs_s) > 1 else 0.0,
            "whole command": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs_dir:
        opening("beside", runs_dir, 1)  # the store and the data cache exist, as any second run finds them
        samples: dict[str, list[dict[str, float]]] = {"beside": [], "before": []}
        for repeat in range(args.repeats):
            for when in ("beside", "before") if repeat % 2 == 0 else ("before", "beside"):
                samples[when].append(opening(when, runs_dir, args.epochs))
    print(f"Command: `.venv/bin/python benchmarks/bench_first_epoch.py --repeats {args.repeats} "
          f"--epochs {args.epochs}`")
    print("| MLflow run opened | first epoch (s) | second epoch (s) | whole command (s) |")
    print("|---|---:|---:|---:|")
    for when, runs in samples.items():
        keys = ("first epoch", "second epoch", "whole command")
        cells = [statistics.median(run[key] for run in runs) for key in keys]
        print(f"| {when} training | " + " | ".join(f"{cell:.2f}" for cell in cells) + " |")
    print("| bare Keras, the product's model and pipeline | seconds |")
    print("|---|---:|")
    for key, value in bare_keras(args.epochs).items():
        print(f"| {key} | {value:.2f} |")


if __name__ == "__main__":
    main()
