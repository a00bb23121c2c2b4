"""Stores that fail: a database nobody answers, a read-only store file, a tracking server killed mid-run, the
store's folder deleted mid-run. Each is one `error:` line within seconds, and what was written stays."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from mnist_exp import experiment
from mnist_exp.config.paths import tracking_uri
from mnist_exp.system.errors import ExperimentError, StoreFailed
from mnist_exp.system.net import ANSWER_TIMEOUT_S
from mnist_exp.tracking import run_tags
from mnist_exp.tracking.run_record import RunContext
from mnist_exp.tracking.store import HTTP_RETRY_DEFAULTS, check_store, connect, open_store
from mnist_exp.tracking.store_checks import check_store_uri
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


class SilentServer:
    """A server on 127.0.0.1 that accepts connections and never replies; with `answers_probe`, it answers
    the reachability check (GET .../experiments/search) as MLflow would and then nothing else. Held
    connections stay open until the `with` block ends, which stops its thread before it returns."""

    def __init__(self, answers_probe: bool = False) -> None:
        self.answers_probe = answers_probe
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SilentServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stopping.set()
        socket.create_connection(self.listener.getsockname()).close()  # wakes accept()
        for connection in list(self.held):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)  # wakes a recv()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        for connection in self.held:
            connection.close()
        self.listener.close()

    def _serve(self) -> None:
        while True:
            connection, _ = self.listener.accept()
            self.held.append(connection)
            if self.stopping.is_set():
                return
            if self.answers_probe and connection.recv(65536).startswith(b"GET /api/2.0/mlflow/experiments/search"):
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                                   b"Connection: close\r\n\r\n{}")
                connection.close()
                self.held.remove(connection)


@contextlib.contextmanager
def web_server(status: int, content_type: str = "text/html", body: bytes = b"<html>hello</html>"):
    """An HTTP server on 127.0.0.1 that is not MLflow: it answers every request with `status` and `body`."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def own_http_timeout(monkeypatch):
    """MLFLOW_HTTP_REQUEST_TIMEOUT as the user left it (unset), whatever the reading commands set, restored after."""
    from mnist_exp.tracking import store

    monkeypatch.setenv(store.HTTP_TIMEOUT_VARIABLE, "0")
    monkeypatch.delenv(store.HTTP_TIMEOUT_VARIABLE)
    monkeypatch.setattr(store, "_short_timeout_set", False)


def every_command_says(url: str, tmp_path: Path, capsys) -> list[tuple[str, str, float]]:
    """(command, its one error line, seconds) for runs, runs show, rerun, predict and a training run on `url`."""
    from mnist_exp.commands import predict, rerun, runs

    picture = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(picture)
    commands = {
        "runs": lambda: runs.main(["--tracking-uri", url]),
        "runs show": lambda: runs.main(["show", "0" * 32, "--tracking-uri", url]),
        "rerun": lambda: rerun.main(["0" * 32, "--tracking-uri", url]),
        "predict": lambda: predict.main([str(picture), "--run", "0" * 32, "--tracking-uri", url]),
    }
    said = []
    for name, command in commands.items():
        started = time.monotonic()
        assert command() == 2, name
        said.append((name, one_error_line(capsys.readouterr().err), time.monotonic() - started))
    runs_dir = tmp_path / "unwritten" / "runs"  # not the folder seeded_store puts an empty store in
    cfg = compose_cfg(runs_dir, f"mlflow.tracking_uri={url}", "data=mnist_sample")
    started = time.monotonic()
    with pytest.raises(ExperimentError) as training:
        experiment.run(cfg)
    said.append(("training", f"error: {training.value}", time.monotonic() - started))
    assert not runs_dir.exists() or not any(runs_dir.rglob("*.db")), "nothing written"
    return said


@pytest.mark.parametrize(("status", "content_type", "body", "returned"), [
    (404, "text/html", b"<html>File not found</html>", "returned 404 Not Found)"),  # python3 -m http.server
    (200, "text/html", b"<html>a login page</html>", "returned 200 OK, text/html that is no JSON object)"),
    (502, "text/html", b"<html>Bad Gateway</html>", "answers HTTP with an error (GET /api/2.0/mlflow/experiments/"
                                                     "search returned 502 Bad Gateway); is the MLflow"),
])
def test_an_http_server_that_is_not_mlflow_is_one_line_for_every_command(tmp_path, capsys, own_http_timeout,
                                                                          status, content_type, body, returned):
    """Once a 46-line traceback quoting the server's HTML (runs against `python3 -m http.server`)."""
    with web_server(status, content_type, body) as url:
        said = every_command_says(url, tmp_path, capsys)
    for command, line, _ in said:
        assert line.startswith(f"error: the server at {url} answers HTTP"), (command, line)
        assert line.endswith(returned) or returned in line, (command, line)
    if status == 404:
        assert said[0][1] == (f"error: the server at {url} answers HTTP but is not an MLflow tracking server "
                              "(GET /api/2.0/mlflow/experiments/search returned 404 Not Found)")


@pytest.mark.slow  # waits out real timeouts (ten seconds in all)
def test_a_server_that_never_replies_is_one_line_within_seconds(tmp_path, capsys, own_http_timeout, monkeypatch):
    """Once 120 s per attempt (MLflow's request timeout), three attempts, for every command. The first command
    waits the real ANSWER_TIMEOUT_S; every command then, the same wait shortened to a second."""
    from mnist_exp.commands import runs
    from mnist_exp.tracking import store_checks

    def refusal(url: str, timeout: float) -> str:
        return (f"error: the server at {url} accepts connections but did not answer GET "
                f"/api/2.0/mlflow/experiments/search within {timeout:.0f} s; it is no working MLflow tracking server")

    with SilentServer() as server:
        started = time.monotonic()
        assert runs.main(["--tracking-uri", server.url]) == 2
        seconds = time.monotonic() - started
        assert one_error_line(capsys.readouterr().err) == refusal(server.url, ANSWER_TIMEOUT_S)
        assert seconds < 2 * ANSWER_TIMEOUT_S + 10  # MLflow's own: 120 s an attempt, three attempts
        monkeypatch.setattr(store_checks, "ANSWER_TIMEOUT_S", 1.0)
        said = every_command_says(server.url, tmp_path, capsys)
    for command, line, seconds in said:
        print(f"{command}: {seconds:.1f} s")
        assert line == refusal(server.url, 1.0), command
        assert seconds < 2 * 1.0 + 10, command


@pytest.mark.slow  # waits out real timeouts
def test_reads_that_stall_after_the_check_time_out_soon_and_say_so_in_one_line(tmp_path, capsys, own_http_timeout,
                                                                               monkeypatch):
    """A server that answers the reachability check, then stalls: the reading commands' short timeout."""
    from mnist_exp.commands import runs
    from mnist_exp.tracking import store

    monkeypatch.setattr(store, "READ_TIMEOUT_S", 2)  # the mechanism, quickly; its default is tested below
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with SilentServer(answers_probe=True) as server:
        started = time.monotonic()
        assert runs.main(["--tracking-uri", server.url]) == 2
        seconds = time.monotonic() - started
    line = one_error_line(capsys.readouterr().err)
    print(f"{seconds:.1f} s: {line}")
    assert line.startswith(f"error: the MLflow store {server.url} failed while reading its runs: ")
    assert "timed out" in line.lower()
    assert seconds < 30  # MLflow's own timeout: 120 s
    for command in (["show", "0" * 32], ["diff", "0" * 32, "1" * 32]):  # never "no run": the store failed
        with SilentServer(answers_probe=True) as server:
            assert runs.main([*command, "--tracking-uri", server.url]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"error: the MLflow store {server.url} failed while reading its runs: "), line


def test_readers_time_out_soon_and_writers_keep_mlflows_timeout_for_uploads(tiny, own_http_timeout, monkeypatch):
    from mnist_exp.tracking import store

    cfg = tiny()
    connect(cfg)  # the store exists
    open_store(tracking_uri(cfg))
    assert os.environ[store.HTTP_TIMEOUT_VARIABLE] == str(store.READ_TIMEOUT_S) and store.READ_TIMEOUT_S <= 10
    connect(cfg)  # this process writes now (a rerun after reading its run): uploads get MLflow's own timeout
    assert store.HTTP_TIMEOUT_VARIABLE not in os.environ
    monkeypatch.setenv(store.HTTP_TIMEOUT_VARIABLE, "600")  # the user's, for readers and writers alike
    open_store(tracking_uri(cfg))
    assert os.environ[store.HTTP_TIMEOUT_VARIABLE] == "600"
    connect(cfg)
    assert os.environ[store.HTTP_TIMEOUT_VARIABLE] == "600"


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
@pytest.mark.fresh_store  # its own empty SQLite file
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


def server_epochs(database: Path) -> int:
    """val_accuracy points the server has stored, read with plain sqlite3 (read-only)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
            return connection.execute("SELECT COUNT(*) FROM metrics WHERE key = 'val_accuracy'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_is_one_line_within_seconds_and_keeps_what_it_stored(tmp_path,
                                                                                               sqlite_tracking_server):
    url, server, database = sqlite_tracking_server
    process = start_cli("data=mnist_sample", "epochs=30", "plots=false", f"mlflow.tracking_uri={url}",
                        runs_dir=tmp_path / "runs")
    result, seconds = break_mid_run(process, lambda: server_epochs(database) >= 1, "epoch 1 on the server",
                                    lambda: os.killpg(server.pid, signal.SIGKILL))
    print(f"exit {result.returncode} {seconds:.1f} s after the server was killed: {result.stderr.strip()}")
    assert result.returncode == 2
    assert f"the MLflow store {url} failed while recording run" in one_error_line(result.stderr)
    assert seconds < WITHIN_SECONDS
    assert server_epochs(database) >= 1  # what the server stored stays
