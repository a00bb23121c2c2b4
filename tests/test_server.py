"""A team's set-up for real: PostgreSQL as MLflow's backend store, `mlflow server --serve-artifacts`, a multirun."""

from __future__ import annotations

import base64
import contextlib
import glob
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mnist_exp.logged_models import register_champion
from tests.conftest import (
    artifact_paths,
    compose_cfg,
    free_port,
    metric_steps,
    run_cli,
    single_sweep,
    store_client,
    wait_for_http,
)

pytestmark = pytest.mark.slow

POSTGRES_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)


def as_postgres(*command: str, **kwargs) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: its commands run as the `postgres` user Debian's package creates."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """PostgreSQL and an MLflow server on 127.0.0.1, both in a temporary folder: the server's URL, its artifacts
    folder, and PostgreSQL's host:port (its databases: mlflow, and an empty one named optuna)."""
    if POSTGRES_BIN is None:
        pytest.skip("needs Debian's postgresql (scripts/install-system-packages.sh)")
    pytest.importorskip("psycopg", reason="needs psycopg (pip install -e '.[test]')")
    artifacts = tmp_path_factory.mktemp("server") / "artifacts"
    # Not under pytest's folder: that is private to root, and PostgreSQL runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="mnist-exp-postgres-"))
    data, socket_dir = root / "pgdata", root / "socket"
    for folder in (data, socket_dir):
        folder.mkdir()
    if os.geteuid() == 0:
        for folder in (root, data, socket_dir):
            shutil.chown(folder, "postgres")
    pg_port, mlflow_port = free_port(), free_port()
    as_postgres(f"{POSTGRES_BIN}/initdb", "-D", str(data), "--auth=trust", "-U", "postgres")
    as_postgres(f"{POSTGRES_BIN}/pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-w", "start",
                "-o", f"-h 127.0.0.1 -p {pg_port} -k {socket_dir}")
    try:
        for database in ("mlflow", "optuna"):
            as_postgres(f"{POSTGRES_BIN}/createdb", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", database)
        # Its log to a file: a pipe nobody reads fills up with the access log, and the server then blocks
        # on its next log line with every request in flight (the module's fourth test hung that way).
        server_log = open(root / "mlflow-server.log", "w")  # noqa: SIM115 - open for the server's lifetime
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", f"postgresql://postgres@127.0.0.1:{pg_port}/mlflow",
             "--serve-artifacts", "--artifacts-destination", str(artifacts),
             "--host", "127.0.0.1", "--port", str(mlflow_port)],
            stdout=server_log, stderr=subprocess.STDOUT, text=True,
        )
        try:
            url = f"http://127.0.0.1:{mlflow_port}"
            wait_for_http(f"{url}/health", server)
            yield url, artifacts, f"127.0.0.1:{pg_port}"
        finally:
            server.terminate()
            server.wait(timeout=30)
            server_log.close()
    finally:
        as_postgres(f"{POSTGRES_BIN}/pg_ctl", "-D", str(data), "-m", "fast", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_a_multirun_against_the_server_arrives_whole(tracking_server, tmp_path):
    url, artifacts, _ = tracking_server
    runs_dir = tmp_path / "runs"
    result = run_cli("-m", "optimizer=sgd,adam", "data=mnist_sample", "epochs=2", "mlflow=server",
                     f"mlflow.tracking_uri={url}", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (runs_dir / "mlflow.db").exists(), "nothing goes to the local store"
    client = store_client(url)
    parent, children = single_sweep(client)
    assert len(children) == 2 and {c.data.params["optimizer.name"] for c in children} == {"sgd", "adam"}
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts go through the server"
        for key in ("loss", "val_accuracy", "epoch_seconds"):
            assert metric_steps(client, child.info.run_id, key) == [1, 2]
        assert {"config.yaml", "plots"} <= artifact_paths(client, child.info.run_id)
        models = client.search_logged_models([child.info.experiment_id],
                                             filter_string=f"source_run_id = '{child.info.run_id}'")
        assert len(models) == 1
    assert any(artifacts.rglob("confusion_matrix.png")), "the server stored the files"
    assert "sweep_summary.txt" in artifact_paths(client, parent.info.run_id)
    best = parent.data.tags["best_child_run_id"]
    assert best in {c.info.run_id for c in children}

    # The registry lives on the server too: what a search does with its best trial.
    server_cfg = compose_cfg(runs_dir, "mlflow=server", f"mlflow.tracking_uri={url}")
    assert register_champion(server_cfg, best) == "mnist-mlp/1"
    assert client.get_model_version_by_alias("mnist-mlp", "champion").run_id == best


def test_a_run_on_the_server_is_rerun_there_with_the_same_epochs(tracking_server, tmp_path):
    url, _, _ = tracking_server
    runs_dir = tmp_path / "runs"
    result = run_cli("data=mnist_sample", "epochs=2", "plots=false", "mlflow.log_model=false", "mlflow=server",
                     f"mlflow.tracking_uri={url}", runs_dir=runs_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = next(line.split()[2] for line in result.stdout.splitlines() if line.startswith("MLflow run "))

    again = subprocess.run([sys.executable, "-m", "mnist_exp.rerun", run_id, "--tracking-uri", url],
                           capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parent.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "warning:" not in again.stderr, "the same commit"
    client = store_client(url)
    original = client.get_run(run_id)
    (rerun,) = client.search_runs([original.info.experiment_id],
                                  filter_string=f"tags.`mnist_exp.rerun_of` = '{run_id}'")
    assert rerun.info.status == "FINISHED" and rerun.info.artifact_uri.startswith("mlflow-artifacts:")
    for key in ("loss", "val_accuracy"):
        assert [(p.step, p.value) for p in client.get_metric_history(run_id, key)] == \
            [(p.step, p.value) for p in client.get_metric_history(rerun.info.run_id, key)]
    assert not (runs_dir / "mlflow.db").exists(), "nothing goes to the local store"


def test_an_unreachable_server_is_one_line_before_training(tmp_path):
    port = free_port()  # nothing listens there
    result = run_cli("mlflow=server", f"mlflow.tracking_uri=http://127.0.0.1:{port}", runs_dir=tmp_path / "runs",
                     timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: cannot reach the MLflow tracking server at http://127.0.0.1:{port}")
    assert len(result.stderr.strip().splitlines()) == 1 and "Epoch" not in result.stdout


SECRET = "S3cret-pw"


def test_passwords_in_the_urls_reach_their_servers_and_nothing_else(tracking_server, tmp_path):
    """A search with two joblib workers, given a tracking URI and an Optuna storage with passwords: every request
    of every process carries the credentials (through MLFLOW_TRACKING_USERNAME/PASSWORD and PGPASSWORD), and the
    password is in no file under runs_dir, no artifact, param, tag or run name, no printed line."""
    url, artifacts, postgres = tracking_server
    runs_dir = tmp_path / "runs"
    with recording_proxy(url) as (proxy, authorizations):
        command = [
            "-m", "hparams_search=optuna", "data=mnist_sample", "epochs=1",
            "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.name=none", "mlflow=server",
            "mlflow.experiment=credentials",  # the server is shared by this module's tests
            f"mlflow.tracking_uri=http://alice:{SECRET}@{proxy.removeprefix('http://')}",
            f"hydra.sweeper.storage=postgresql+psycopg://postgres:{SECRET}@{postgres}/optuna"]
        result = run_cli(*command, "hydra.sweeper.n_trials=2", runs_dir=runs_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        # The study's one parent run on the server, found again through the PostgreSQL study.
        resumed = run_cli(*command, "hydra.sweeper.n_trials=3", runs_dir=runs_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.startswith("Resuming study mnist-mlp-mnist_sample (postgresql+psycopg://postgres:***@")
    basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert authorizations and set(authorizations) == {basic}, "the sweeping process and both workers"
    client = store_client(url)
    parent, children = single_sweep(client, "credentials")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children), (
        [(c.info.status, c.data.tags.get("optuna.trial_number")) for c in children], result.stdout, resumed.stdout,
        result.stderr[-3000:], resumed.stderr[-3000:])
    assert resumed.stdout.splitlines()[0].endswith(f"MLflow parent run {parent.info.run_id}")

    printed = result.stdout + result.stderr + resumed.stdout + resumed.stderr
    assert f"UI: open http://alice:***@{proxy.removeprefix('http://')}" in printed
    assert f"postgresql+psycopg://postgres:***@{postgres}/optuna" in printed
    recorded = [printed, parent.data.tags["optuna.storage"]]
    for run in [parent, *children]:
        recorded += [run.info.run_name, *run.data.params.values(), *run.data.tags.values()]
    assert not [text for text in recorded if SECRET in text]
    files = [path for folder in (runs_dir, artifacts) for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "overrides.txt" for path in files) and any(path.name == "overrides.yaml" for path in files)
    assert not [path for path in files if SECRET.encode() in path.read_bytes()]


@contextlib.contextmanager
def recording_proxy(upstream: str):
    """An HTTP proxy to `upstream` on a free port that keeps each request's Authorization header: its URL and
    that list."""
    authorizations: list[str | None] = []

    class Forward(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            authorizations.append(self.headers.get("Authorization"))
            length = int(self.headers.get("Content-Length") or 0)
            hop = ("host", "authorization", "connection", "content-length", "transfer-encoding")
            headers = {key: value for key, value in self.headers.items() if key.lower() not in hop}
            request = urllib.request.Request(upstream + self.path, data=self.rfile.read(length) if length else None,
                                             headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, answer, answer_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as error:
                status, answer, answer_headers = error.code, error.read(), error.headers
            self.send_response(status)
            for key, value in answer_headers.items():
                if key.lower() not in hop:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", authorizations
    finally:
        server.shutdown()
        server.server_close()
