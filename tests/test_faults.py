"""Faults during work: many writers on one SQLite store, a full disk."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from tests.conftest import all_runs, finish, metric_steps, run_cli, start_cli, store_client

pytestmark = pytest.mark.slow

PARALLEL_RUNS = 8
EPOCHS = 3
PER_EPOCH = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second")


def test_eight_processes_on_one_sqlite_store_lose_nothing(tmp_path):
    runs_dir = tmp_path / "runs"
    processes = [
        start_cli("data=mnist_sample", f"epochs={EPOCHS}", f"seed={seed}", "plots=false", runs_dir=runs_dir,
                  stdout=subprocess.DEVNULL)
        for seed in range(PARALLEL_RUNS)
    ]
    try:
        results = [finish(process, timeout=900) for process in processes]
    finally:
        for process in processes:
            process.kill()
    errors = [result.stderr[-2000:] for result in results if result.returncode != 0]
    assert not errors, errors
    client = store_client(runs_dir)
    runs = all_runs(client)
    assert len(runs) == PARALLEL_RUNS and all(run.info.status == "FINISHED" for run in runs)
    assert sorted(run.data.params["seed"] for run in runs) == [str(seed) for seed in range(PARALLEL_RUNS)]
    for run in runs:
        for key in PER_EPOCH:
            steps = metric_steps(client, run.info.run_id, key)
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_id, key, steps)
        assert {"test_accuracy", "final_val_accuracy"} <= run.data.metrics.keys()


@contextlib.contextmanager
def small_tmpfs(folder, size="256k"):
    """A tiny file system mounted at `folder` (root only), so writes there fail with ENOSPC."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_the_run_with_the_reason_and_the_store_stays_readable(tmp_path):
    runs_dir = tmp_path / "runs"
    # The store stays on the real disk; the artifacts (the model is ~5 MB) go to a 256 kB file system.
    with small_tmpfs(runs_dir / "artifacts"):
        result = run_cli("data=mnist_sample", "epochs=1", runs_dir=runs_dir, timeout=300)
        assert result.returncode == 2, result.stderr[-3000:]
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        client = store_client(runs_dir)
        (run,) = all_runs(client)
        assert run.info.status == "FAILED"
        assert "No space left on device" in run.data.tags["mnist_exp.failure"]
        assert metric_steps(client, run.info.run_id, "val_accuracy") == [1]
