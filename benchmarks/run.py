"""The benchmark suite: one command, one table. Every comparison runs side by side, alternating A and B.

    .venv/bin/python benchmarks/run.py [--repeats 3] [--only startup,overhead,...] [--write BENCHMARKS.md]

Sections (all on full Fashion-MNIST from Debian's dataset-fashion-mnist):
  startup   --help, --cfg job, a config error, and launch-to-first-training-step, against `import tensorflow`
  overhead  `python -m mnist_exp data=fashion_mnist` (MLflow on) against benchmarks/plain_keras.py
  training  epoch time per training variant and backend, against the float32 GEMM floor
  data      first load (decoding IDX) against a cached load of the 70k images
  sweep     4 trials x 2 epochs, 1 worker against 2 (bench_sweep.py), and MLflow's cost per epoch
Peak memory (RSS) of a default run is reported under overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SECTIONS = ("startup", "overhead", "training", "data", "sweep")


def wall(command: list[str], env: dict[str, str] | None = None, expect_failure: bool = False) -> float:
    """Seconds `command` takes; a command that fails (or, with `expect_failure`, succeeds) fails the benchmark."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, check=False, capture_output=True, text=True,
                            env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if (result.returncode != 0) != expect_failure:
        sys.exit(f"benchmark failed: {' '.join(command)} exited {result.returncode}\n{result.stderr[-2000:]}")
    return seconds


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of each variant, running them in turn (reversed every other round) so noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in names:
            samples[name].append(variants[name]())
            print(f"    {name}: {samples[name][-1]:.3f}", file=sys.stderr)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident memory of `command` and its children, measured by a fresh wrapper process."""
    probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], capture_output=True); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    result = subprocess.run([PYTHON, "-c", probe, *command], cwd=ROOT, capture_output=True, text=True)
    return int(result.stdout.strip()) / 1024


def seconds_until_line(command: list[str], starts_with: str) -> float:
    """Seconds from launching `command` until it prints a line starting with `starts_with`.

    Timing a printed line, not the exit, leaves out interpreter and TensorFlow teardown.
    """
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: float | None = None
    for line in process.stdout:
        if seen is None and line.startswith(starts_with):
            seen = time.perf_counter() - started
    process.wait()
    if process.returncode != 0 or seen is None:
        sys.exit(f"benchmark failed: {' '.join(command)} exited {process.returncode} "
                 f"{'after' if seen else 'without'} printing {starts_with!r}")
    return seen


def time_to_first_step(runs_dir: str) -> float:
    """Seconds from launch until Keras starts epoch 1 of a default Fashion-MNIST run."""
    # Keras prints "Epoch 1/N" just before the first step, and only when N > 1.
    return seconds_until_line(
        [PYTHON, "-m", "mnist_exp", "data=fashion_mnist", "epochs=2", f"runs_dir={runs_dir}"], "Epoch 1/"
    )


def time_to_tensorflow() -> float:
    """Seconds from launch until `import tensorflow` has returned, measured the same way."""
    return seconds_until_line([PYTHON, "-c", "import tensorflow; print('imported')"], "imported")


def section_startup(repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as runs_dir:
        time_to_first_step(runs_dir)  # fills the data cache
        medians = alternate({
            "import tensorflow": time_to_tensorflow,
            "--help": lambda: wall([PYTHON, "-m", "mnist_exp", "--help"]),
            "--cfg job": lambda: wall([PYTHON, "-m", "mnist_exp", "--cfg", "job"]),
            "config error (epochs=0)": lambda: wall([PYTHON, "-m", "mnist_exp", "epochs=0"], expect_failure=True),
            "launch to first training step": lambda: time_to_first_step(runs_dir),
        }, repeats)
    tf_import = medians["import tensorflow"]
    rows = ["| start-up | seconds | / `import tensorflow` | goal |", "|---|---:|---:|---|"]
    for name, seconds in medians.items():
        quick = "< 1 s and < 0.25"
        goal = {
            "--help": quick, "--cfg job": quick, "config error (epochs=0)": quick,
            "launch to first training step": f"<= import + 1 s = {tf_import + 1:.1f} s",
        }.get(name, "")
        rows.append(f"| {name} | {seconds:.2f} | {seconds / tf_import:.2f} | {goal} |")
    return rows


def section_overhead(repeats: int) -> list[str]:
    with tempfile.TemporaryDirectory() as runs_dir:
        command = [PYTHON, "-m", "mnist_exp", "data=fashion_mnist", f"runs_dir={runs_dir}"]
        wall(command)  # fills the data cache and creates the store, as any second run finds them
        peak_mib = peak_rss_mib(command)
        # Like for like: the plain script draws no pictures; the default run also draws three (plots=true).
        medians = alternate({
            "plain": lambda: wall([PYTHON, "benchmarks/plain_keras.py"]),
            "same work": lambda: wall([*command, "plots=false"]),
            "default": lambda: wall(command),
        }, repeats)
    plain = medians["plain"]
    return [
        "| 5 epochs, default model, wall time | seconds | / plain Keras |", "|---|---:|---:|",
        f"| plain Keras script (no Hydra, no MLflow) | {plain:.2f} | 1.000 |",
        f"| `python -m mnist_exp data=fashion_mnist plots=false` (MLflow on; goal <= 1.05) "
        f"| {medians['same work']:.2f} | {medians['same work'] / plain:.3f} |",
        f"| `python -m mnist_exp data=fashion_mnist` (also draws the run's pictures) "
        f"| {medians['default']:.2f} | {medians['default'] / plain:.3f} |",
        f"| peak RSS of `python -m mnist_exp data=fashion_mnist` | {peak_mib:.0f} MiB | |",
    ]


TRAINING_VARIANTS = {
    "defaults": [],
    "steps_per_execution=1": ["steps_per_execution=1"],
    "jit_compile=true": ["jit_compile=true"],
    "deterministic=false": ["deterministic=false"],
    "backend=jax": ["backend=jax"],
    "backend=jax steps_per_execution=1": ["backend=jax", "steps_per_execution=1"],
}


def section_training(repeats: int) -> list[str]:
    def measure(overrides: list[str]) -> dict:
        result = subprocess.run([PYTHON, "benchmarks/bench_training.py", *overrides], cwd=ROOT,
                                capture_output=True, text=True)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    variants = dict(TRAINING_VARIANTS)
    try:
        import jax  # noqa: F401
    except ImportError:
        variants = {name: overrides for name, overrides in variants.items() if "backend=jax" not in overrides}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(repeats):
        names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
        for name in names:
            results[name].append(measure(variants[name]))
            print(f"    {name}: {results[name][-1].get('epoch_s', float('nan')):.3f} s/epoch", file=sys.stderr)
    rows = ["| training variant | s / epoch | samples / s | GEMM floor (s) | fraction of floor | epoch / floor "
            "| fastest epoch / floor | first epoch (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, samples in results.items():
        samples = [s for s in samples if s]
        if not samples:
            rows.append(f"| {name} | failed | | | | | | |")
            continue
        med = {key: statistics.median(s[key] for s in samples)
               for key in ("epoch_s", "samples_per_s", "gemm_floor_s", "fraction_of_floor", "first_epoch_s")}
        fastest = min(s["best_epoch_s"] for s in samples)
        rows.append(f"| {name} | {med['epoch_s']:.2f} | {med['samples_per_s']:.0f} | {med['gemm_floor_s']:.2f} "
                    f"| {med['fraction_of_floor']:.2f} | {med['epoch_s'] / med['gemm_floor_s']:.2f} "
                    f"| {fastest / med['gemm_floor_s']:.2f} | {med['first_epoch_s']:.2f} |")
    return rows


def section_data(repeats: int) -> list[str]:
    from omegaconf import OmegaConf

    from mnist_exp.data import load_dataset

    data_cfg = OmegaConf.load(ROOT / "conf" / "data" / "fashion_mnist.yaml")

    def first_load() -> float:
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            load_dataset(data_cfg, seed=42, cache_dir=Path(cache))
            return time.perf_counter() - started

    warm = Path(tempfile.mkdtemp())
    load_dataset(data_cfg, seed=42, cache_dir=warm)

    def cached_load() -> float:
        started = time.perf_counter()
        load_dataset(data_cfg, seed=42, cache_dir=warm)
        return time.perf_counter() - started

    medians = alternate({"first load (decode IDX .gz)": first_load, "cached load": cached_load}, repeats)
    return ["| loading 70k images, split and scaled | seconds |", "|---|---:|",
            *(f"| {name} | {seconds:.3f} |" for name, seconds in medians.items()),
            "| goal for the cached load | < 0.2 |"]


def section_sweep(repeats: int) -> list[str]:
    result = subprocess.run([PYTHON, "benchmarks/bench_sweep.py", "--repeats", str(repeats)], cwd=ROOT,
                            capture_output=True, text=True)
    rows = [line for line in result.stdout.splitlines() if line.startswith("|")]
    return [*rows, "", *mlflow_epoch_cost()]


def mlflow_epoch_cost(epochs: int = 200) -> list[str]:
    """What recording one epoch's six metrics costs, in the local SQLite store."""
    from mlflow import MlflowClient

    from mnist_exp.tracking.run_record import RunRecorder
    from mnist_exp.tracking.store import Store

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        client = MlflowClient(uri)
        experiment_id = client.create_experiment("bench")
        run = client.create_run(experiment_id)
        recorder = RunRecorder(uri=uri, store=Store(client, experiment_id, uri), run_id=run.info.run_id)
        metrics = {"loss": 0.3, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.9,
                   "epoch_seconds": 1.0, "samples_per_second": 50000.0}
        started = time.perf_counter()
        for epoch in range(1, epochs + 1):
            recorder.log_epoch(epoch, metrics)
        per_epoch = (time.perf_counter() - started) / epochs
    return ["| MLflow logging per epoch (6 metrics, SQLite) | milliseconds |", "|---|---:|",
            f"| one `log_epoch` call | {per_epoch * 1000:.1f} |"]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import keras

    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"keras {keras.__version__}, {platform.system()} {platform.release()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--write", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = [f"Machine: {machine()}", f"Command: `.venv/bin/python benchmarks/run.py --repeats {args.repeats}`",
           f"Medians of {args.repeats} repeats.", ""]
    for name in chosen:
        print(f"== {name}", file=sys.stderr)
        started = time.perf_counter()
        out += [f"### {name}", "", *globals()[f"section_{name}"](args.repeats), "",
                f"({time.perf_counter() - started:.0f} s)", ""]
    text = "\n".join(out)
    print(text)
    if args.write:
        Path(args.write).write_text(text + "\n")


if __name__ == "__main__":
    main()
