"""Stores that fail: a database nobody answers, a read-only store file, a tracking server killed mid-run, the
store's folder deleted mid-run. Each is one `error:` line within seconds, and what was written stays."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mnist_exp import experiment, run_tags
from mnist_exp.errors import ExperimentError, StoreFailed
from mnist_exp.run_record import RunContext
from mnist_exp.store import HTTP_RETRY_DEFAULTS, check_store, connect, open_store, tracking_uri
from mnist_exp.store_checks import check_store_uri
from tests.conftest import (
    all_runs,
    compose_cfg,
    epochs_recorded,
    finish,
    free_port,
    metric_steps,
    run_cli,
    start_cli,
    store_client,
    wait_for_http,
    wait_until,
    write_npz,
)

# "Within seconds", loosely: a loaded 2-core machine must not fail these; the measured time is printed.
WITHIN_SECONDS = 60


@pytest.fixture
def tiny(tmp_path):
    """A config for fast epochs on a tiny npz, recording into tmp_path/runs."""
    data = write_npz(tmp_path / "mnist.npz")
    return lambda *overrides: compose_cfg(
        tmp_path / "runs", f"data.path={data}", "batch_size=32", "model.hidden_units=[32]",
        "mlflow.log_model=false", "plots=false", *overrides,
    )


@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only for this process, root included: its mode for others, the immutable flag for root."""
    path.chmod(0o444)
    flagged = False
    try:
        if os.access(path, os.W_OK):  # root writes whatever the mode says
            if shutil.which("chattr") is None:
                pytest.skip("root ignores file modes, and chattr is not installed")
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"root ignores file modes, and chattr +i fails here: {result.stderr.strip()}")
            flagged = True
        yield path
    finally:
        if flagged:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


def break_mid_run(process: subprocess.Popen, ready: Callable[[], bool], waiting_for: str,
                  breaking: Callable[[], None]) -> tuple[subprocess.CompletedProcess, float]:
    """Once `ready()` holds, `breaking()` the store: the process's result, and the seconds it took to end after."""
    try:
        wait_until(ready, 600, waiting_for, process=process)
        breaking()
        broken = time.monotonic()
        result = finish(process, timeout=1200)
    finally:
        process.kill()
    return result, time.monotonic() - broken


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


# --- in-process ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["postgresql", "mysql+pymysql"])
def test_a_database_nobody_answers_is_one_line_within_seconds(scheme):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ExperimentError, match=f"cannot reach the database of the MLflow store at 127.0.0.1:{port}"):
        check_store_uri(f"{scheme}://user:secret@127.0.0.1:{port}/runs", writing=True)
    assert time.monotonic() - started < WITHIN_SECONDS


def test_a_read_only_store_file_is_refused_before_a_run_and_still_read(tiny):
    cfg = tiny()
    connect(cfg)  # creates the store
    database = Path(tracking_uri(cfg).removeprefix("sqlite:///"))
    before = database.read_bytes()
    with read_only(database):
        with pytest.raises(ExperimentError, match="mlflow.db is read-only; runs cannot be recorded in it"):
            check_store(cfg)
        assert open_store(tracking_uri(cfg)).search_experiments()  # reading commands still work
    assert database.read_bytes() == before


def test_the_store_deleted_mid_run_is_one_line_within_seconds(tiny):
    cfg = tiny("epochs=5")
    runs_dir = Path(cfg.runs_dir)
    deleted_at: list[float] = []

    def delete_the_store(epoch, metrics):
        if epoch == 1:
            shutil.rmtree(runs_dir)
            deleted_at.append(time.monotonic())

    with pytest.raises(StoreFailed) as failure:
        experiment.run(cfg, context=RunContext(on_epoch=delete_the_store))
    seconds = time.monotonic() - deleted_at[0]
    print(f"failed {seconds:.1f} s after the store was deleted: {failure.value}")
    assert "(its file is gone)" in str(failure.value) and len(str(failure.value).splitlines()) == 1
    assert seconds < WITHIN_SECONDS


def test_a_store_failing_mid_run_ends_the_run_failed_with_the_epochs_so_far_when_it_can(tiny, monkeypatch):
    """A write that fails (a lock held too long, a server restarting) is one line; the run ends FAILED with the
    reason and keeps its epochs, as the store takes the closing writes."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    original = MlflowClient.log_batch

    def locked_at_epoch_two(self, run_id, metrics=(), *args, **kwargs):
        if any(metric.step == 2 for metric in metrics):
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", locked_at_epoch_two)
    cfg = tiny("epochs=3")
    recording_failed = r"failed while recording run \w+ \(epochs recorded: 1\): .*database is locked"
    with pytest.raises(StoreFailed, match=recording_failed):
        experiment.run(cfg)
    client = store_client(tracking_uri(cfg))
    (run,) = all_runs(client)
    assert run.info.status == "FAILED" and run.data.tags[run_tags.STATE_TAG] == "FAIL"
    assert run.data.tags[run_tags.FAILURE_TAG].startswith("StoreFailed: the MLflow store")
    assert metric_steps(client, run.info.run_id, "val_accuracy") == [1]


def test_mlflow_http_retries_are_bounded_unless_the_user_set_them(tiny, monkeypatch):
    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "5")
    connect(tiny())
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "5"


# --- the CLI ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_unreachable_postgresql_store_is_one_line_within_seconds(tmp_path):
    started = time.monotonic()
    uri = f"postgresql://u:p@127.0.0.1:{free_port()}/db"
    result = run_cli("data=mnist_sample", "epochs=3", f"mlflow.tracking_uri={uri}", runs_dir=tmp_path / "runs",
                     timeout=600)
    seconds = time.monotonic() - started
    print(f"exit {result.returncode} after {seconds:.1f} s: {result.stderr.strip()}")
    assert result.returncode == 2
    assert "cannot reach the database of the MLflow store" in one_error_line(result.stderr)
    assert seconds < WITHIN_SECONDS


@pytest.mark.slow
def test_a_read_only_store_file_is_one_line_and_left_as_it_was(tmp_path):
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    database = runs_dir / "mlflow.db"
    sqlite3.connect(database).close()  # an empty SQLite file: what a first run would start from
    with read_only(database):
        result = run_cli("data=mnist_sample", "epochs=3", runs_dir=runs_dir, timeout=600)
    assert result.returncode == 2
    assert "mlflow.db is read-only" in one_error_line(result.stderr)
    assert database.stat().st_size == 0


@pytest.mark.slow
def test_the_store_folder_deleted_mid_run_is_one_line_within_seconds(tmp_path):
    runs_dir = tmp_path / "runs"
    process = start_cli("data=mnist_sample", "epochs=30", "plots=false", runs_dir=runs_dir)
    result, seconds = break_mid_run(process, lambda: epochs_recorded(runs_dir) >= 1, "epoch 1 in the store",
                                    lambda: shutil.rmtree(runs_dir))
    print(f"exit {result.returncode} {seconds:.1f} s after the folder was deleted: {result.stderr.strip()}")
    assert result.returncode == 2
    assert "(its file is gone)" in one_error_line(result.stderr)
    assert seconds < WITHIN_SECONDS


@pytest.fixture
def tracking_server():
    """`mlflow server` on 127.0.0.1 with an SQLite backend in a folder of its own: (URL, process, database)."""
    root = Path(tempfile.mkdtemp(prefix="mnist-exp-server-"))
    database, port = root / "server.db", free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{database}",
         "--serve-artifacts", "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", server)
        yield url, server, database
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def server_epochs(database: Path) -> int:
    """val_accuracy points the server has stored, read with plain sqlite3 (read-only)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT COUNT(*) FROM metrics WHERE key = 'val_accuracy'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_is_one_line_within_seconds_and_keeps_what_it_stored(tmp_path,
                                                                                               tracking_server):
    url, server, database = tracking_server
    process = start_cli("data=mnist_sample", "epochs=30", "plots=false", f"mlflow.tracking_uri={url}",
                        runs_dir=tmp_path / "runs")
    result, seconds = break_mid_run(process, lambda: server_epochs(database) >= 1, "epoch 1 on the server",
                                    lambda: os.killpg(server.pid, signal.SIGKILL))
    print(f"exit {result.returncode} {seconds:.1f} s after the server was killed: {result.stderr.strip()}")
    assert result.returncode == 2
    assert f"the MLflow store {url} failed while recording run" in one_error_line(result.stderr)
    assert seconds < WITHIN_SECONDS
    assert server_epochs(database) >= 1  # what the server stored stays
