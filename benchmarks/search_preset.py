"""A Fashion-MNIST search preset run from scratch, timed, and its study exported to benchmarks/results/.

    .venv/bin/python benchmarks/search_preset.py fashion_cnn [--jobs 2] [-- extra overrides]

Runs `python -m mnist_exp -m hparams_search=PRESET hydra/launcher=joblib hydra.sweeper.n_jobs=JOBS` into a
new folder (`runs/presets/PRESET-<time>`, so the study is new, never resumed), measures its wall time and the
CPU time of the whole process tree (the search and its workers), and writes
`benchmarks/results/PRESET.json`: the command, the machine, wall and CPU seconds, every trial (number, state,
value, params, overrides, test accuracy, epochs, run id) and the best trial's run (its id, metrics, every
param, and the command that trains it again). Selection is the study's: validation only. A search that fails
fails the benchmark and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# What a reader needs from the best run: its scores, its size and what it cost.
BEST_METRICS = ("final_val_accuracy", "final_val_loss", "test_accuracy", "test_loss", "epochs_completed",
                "train_seconds", "parameters", "macs_per_example")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help="a conf/hparams_search/ preset, e.g. fashion_cnn")
    parser.add_argument("--jobs", type=int, default=2, help="trials at once (joblib), one core each")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    runs_dir = ROOT / "runs" / "presets" / f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    command = ["-m", f"hparams_search={args.preset}", "hydra/launcher=joblib", f"hydra.sweeper.n_jobs={args.jobs}",
               *args.overrides]
    started = time.perf_counter()
    search = subprocess.Popen([sys.executable, "-m", "mnist_exp", *command, f"runs_dir={runs_dir}"], cwd=ROOT,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    watch = TreeCpu(search.pid)
    returncode = search.wait()
    wall = time.perf_counter() - started
    watch.stop()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The search and every process it waited for; the watch also sees workers nobody waited for.
    cpu = max(usage.ru_utime + usage.ru_stime, watch.seconds())
    if returncode != 0:
        sys.exit(f"benchmark failed: the search exited {returncode}")
    export = study_export(runs_dir)
    export.update({
        "preset": args.preset,
        "command": " ".join(["python -m mnist_exp", *command]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
    })
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.preset}.json"
    path.write_text(json.dumps(export, indent=1) + "\n")
    best = export["best"]
    print(f"{path.relative_to(ROOT)}: best trial {best['trial']}: val_accuracy {best['value']:.4f}, test_accuracy "
          f"{best['metrics']['test_accuracy']:.4f}; wall {wall / 60:.1f} min, CPU {export['cpu_seconds'] / 60:.1f} min")


class TreeCpu:
    """The CPU time of a process and all its descendants, read from /proc twice a second: each process's own
    user + system time as last seen (a process's last half second before it ends can be missed)."""

    def __init__(self, root: int):
        self._root, self._last, self._done = root, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def seconds(self) -> float:
        return sum(self._last.values()) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            parents, ticks = {}, {}
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # ended meanwhile
                # After the name: state, ppid, ... utime and stime are the 12th and 13th fields.
                parents[int(entry.name)], ticks[int(entry.name)] = int(fields[1]), int(fields[11]) + int(fields[12])
            for pid, used in ticks.items():
                ancestor = pid
                while ancestor not in (self._root, 0, 1) and ancestor in parents:
                    ancestor = parents[ancestor]
                if ancestor == self._root:
                    self._last[pid] = max(used, self._last.get(pid, 0))


def study_export(runs_dir: Path) -> dict:
    """The one study in `runs_dir`'s Optuna storage, and the best trial's MLflow run."""
    import mlflow
    import optuna

    storage = f"sqlite:///{runs_dir / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = [{
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value if trial.state.name == "COMPLETE" else None,
        "params": trial.params,
        "overrides": trial.user_attrs.get("overrides", []),
        "baseline": bool(trial.user_attrs.get("mnist_exp.baseline")),
        "test_accuracy": trial.user_attrs.get("test_accuracy"),
        "epochs": len(trial.intermediate_values) or None,
        "run_id": trial.user_attrs.get("run_id"),
        "seconds": round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
        if trial.datetime_complete and trial.datetime_start else None,
    } for trial in study.trials]
    best = study.best_trial
    client = mlflow.MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}")
    run = client.get_run(best.user_attrs["run_id"])
    return {
        "study_name": study.study_name,
        "direction": study.direction.name.lower(),
        "metric": "val_accuracy",
        "trials": trials,
        "best": {
            "trial": best.number,
            "value": best.value,
            "run_id": run.info.run_id,
            "metrics": {key: run.data.metrics[key] for key in BEST_METRICS if key in run.data.metrics},
            "params": dict(sorted(run.data.params.items())),
            # From the checkout that ran the search: the store is under its runs/ folder.
            "store": str((runs_dir / "mlflow.db").relative_to(ROOT)),
            "rerun": f"python -m mnist_exp.rerun {run.info.run_id} "
                     f"--tracking-uri sqlite:///$PWD/{(runs_dir / 'mlflow.db').relative_to(ROOT)}",
        },
    }


if __name__ == "__main__":
    main()
