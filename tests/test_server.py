"""A team's set-up for real: PostgreSQL as MLflow's backend store, `mlflow server --serve-artifacts`, a multirun."""

from __future__ import annotations

import base64
import contextlib
import glob
import http.server
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from mnist_exp.tracking.logged_models import register_champion
from tests.conftest import (
    PROJECT_ROOT,
    all_runs,
    artifact_paths,
    compose_cfg,
    free_port,
    metric_steps,
    run_cli,
    single_sweep,
    store_client,
    sweep_parents_and_children,
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


@pytest.mark.fresh_store
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


@pytest.mark.fresh_store
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
            "-m", "hparams_search=optuna", "data=mnist_sample", "epochs=1", "hydra.sweeper.pruner.name=none",
            "mlflow=server", "mlflow.experiment=credentials",  # the server is shared by this module's tests
            f"mlflow.tracking_uri=http://alice:{SECRET}@{proxy.removeprefix('http://')}",
            f"hydra.sweeper.storage=postgresql+psycopg://postgres:{SECRET}@{postgres}/optuna"]
        result = run_cli(*command, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2",
                         runs_dir=runs_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        # The study's one parent run on the server, found again through the PostgreSQL study; its one trial in
        # the sweeping process itself (the workers' requests are the first search's).
        resumed = run_cli(*command, "hydra.sweeper.n_trials=3", runs_dir=runs_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.startswith("Resuming study mnist-mlp-mnist_sample (postgresql+psycopg://postgres:***@")
    basic = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert authorizations and set(authorizations) == {basic}, "the sweeping process and both workers"
    client = store_client(url)
    parent, children = single_sweep(client, "credentials")
    failures = [(c.info.status, c.data.tags.get("optuna.trial_number"), c.data.tags.get("mnist_exp.failure"))
                for c in children]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children), "\n".join(
        [repr(failures), result.stdout, resumed.stdout, result.stderr[-3000:], resumed.stderr[-3000:]])
    assert resumed.stdout.splitlines()[0].endswith(f"MLflow parent run {parent.info.run_id}")

    printed = result.stdout + result.stderr + resumed.stdout + resumed.stderr
    assert f"UI: open http://alice:***@{proxy.removeprefix('http://')}" in printed
    assert f"postgresql+psycopg://postgres:***@{postgres}/optuna" in printed
    files = [path for folder in (runs_dir, artifacts) for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "overrides.txt" for path in files) and any(path.name == "overrides.yaml" for path in files)
    assert not where_secrets_appear([SECRET], printed + parent.data.tags["optuna.storage"], [parent, *children],
                                    [runs_dir, artifacts])


def where_secrets_appear(secrets: list[str], printed: str, runs: list, folders: list[Path]) -> list[str]:
    """Where any of `secrets` appears: in `printed`, in a run's name, params or tags, in a file under `folders`
    (a database, an artifact, Hydra's folders). [] when nowhere."""
    def holds_one(text: str | bytes) -> bool:
        return any((secret.encode() if isinstance(text, bytes) else secret) in text for secret in secrets)

    found = ["printed output"] if holds_one(printed) else []
    for run in runs:
        named = {"run name": run.info.run_name, **{f"param {key}": value for key, value in run.data.params.items()},
                 **{f"tag {key}": value for key, value in run.data.tags.items()}}
        found += [f"run {run.info.run_id}: {name}" for name, value in named.items() if holds_one(f"{name} {value}")]
    files = [path for folder in folders for path in folder.rglob("*") if path.is_file()]
    return found + [str(path) for path in files if holds_one(path.read_bytes())]


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


# Passwords of 12 characters or more: MLflow refuses shorter ones.
ADMIN_SECRET, ALICE_SECRET, BOB_SECRET = "Adm1n-secret-pw", "Al1ce-secret-pw", "B0b-secret-pw-x"
WRONG_SECRET = "Wr0ng-pw-12345"
CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.mark.xdist_group("basic_auth")  # the suite's longest test, with a server of its own
def test_the_basic_auth_recipe_refuses_strangers_and_serves_its_users(tmp_path, monkeypatch):
    """README's authenticated server: no default admin password; a run, a search and `runs` without credentials,
    and `runs` with a wrong password, are one line, exit 2, and no run is created; with them, one user's
    run and Optuna search and another user's grid sweep land in one shared experiment, and a user denied it is
    refused in one line; no password anywhere (output, Hydra's folders, the server's databases, log and
    artifacts, params, tags)."""
    pytest.importorskip("flask_wtf", reason="needs mlflow[auth] (pip install -e '.[test]')")
    for variable in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    server_dir, runs_dir = tmp_path / "server", tmp_path / "runs"
    server_dir.mkdir()
    with basic_auth_server(server_dir) as url:
        assert answer_status(url, "admin", "password1234") == 401, "older MLflow's default admin password"
        assert answer_status(url, "admin", ADMIN_SECRET) == 200
        with signed_in("admin", ADMIN_SECRET):  # README's way of adding users
            from mlflow.server import get_app_client

            users = get_app_client("basic-auth", tracking_uri=url)
            users.create_user("alice", ALICE_SECRET)
            users.create_user("bob", BOB_SECRET)
        cheaper_password_checks(server_dir / "basic_auth.db", {
            "admin": ADMIN_SECRET, "alice": ALICE_SECRET, "bob": BOB_SECRET})
        assert answer_status(url, "alice", WRONG_SECRET) == 401 and answer_status(url, "alice", ALICE_SECRET) == 200
        alice, bob = credentials("alice", ALICE_SECRET), credentials("bob", BOB_SECRET)
        # Models are left out: the other tests of this module send them through the server; here config.yaml
        # travels through its artifact proxy, authenticated like every other request.
        tiny = ("data=mnist_sample", "epochs=1", "plots=false", "mlflow.log_model=false", "mlflow=server",
                f"mlflow.tracking_uri={url}")

        printed = []
        server = f"error: the MLflow tracking server at {url}"
        variables = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        refusals = [(None, f"{server} needs authentication: set {variables}\n"),
                    (credentials("alice", WRONG_SECRET),
                     f"{server} refused user alice: wrong user name or password in {variables}\n")]
        search = ("-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner.name=none", *tiny)
        refused = [(run_cli(*tiny, runs_dir=runs_dir, timeout=300), refusals[0][1]),
                   (run_cli(*search, runs_dir=runs_dir, timeout=300), refusals[0][1]),
                   *((runs_command(url, env), line) for env, line in refusals)]
        for result, line in refused:
            assert (result.returncode, result.stderr) == (2, line), result.stderr[-3000:]
            printed.append(result.stdout + result.stderr)
        with signed_in("admin", ADMIN_SECRET):
            client = store_client(url)
            assert [e.name for e in client.search_experiments()] == ["Default"] and all_runs(client) == []

        run = run_cli(*tiny, runs_dir=runs_dir, env=alice)
        # Bob's sweep in the experiment Alice's run created: README's default_permission = EDIT.
        sweep = run_cli("-m", "optimizer=sgd,adam", *tiny, runs_dir=runs_dir, env=bob)
        searched = run_cli(*search, runs_dir=runs_dir, env=alice)
        listed = runs_command(url, alice)
        for result in (run, sweep, searched, listed):
            assert result.returncode == 0, result.stderr[-3000:]
            printed.append(result.stdout + result.stderr)
        assert searched.stdout.startswith("New study"), "the refused search left no empty study behind"

        with signed_in("admin", ADMIN_SECRET):
            client = store_client(url)
            runs = all_runs(client)
            parents, children = sweep_parents_and_children(client)
            (search_parent,) = [p for p in parents if "optuna.storage" in p.data.tags]
            (sweep_parent,) = [p for p in parents if p is not search_parent]
            assert {e.name for e in client.search_experiments()} == {"Default", "mnist-exp"}
            assert len(runs) == 1 + 3 + 3 and all(r.info.status == "FINISHED" for r in runs)
            assert len(children[search_parent.info.run_id]) == 2
            swept = children[sweep_parent.info.run_id]
            assert {c.data.params["optimizer.name"] for c in swept} == {"sgd", "adam"}
            for child in swept:
                assert child.info.artifact_uri.startswith("mlflow-artifacts:")
                assert "config.yaml" in artifact_paths(client, child.info.run_id)
        assert len(list((server_dir / "artifacts").rglob("config.yaml"))) == len(runs), "each run's, via the server"

        # Bob denied this experiment (default_permission is a floor for lesser grants; DENY is a veto): one line.
        with signed_in("admin", ADMIN_SECRET):
            experiment_id = client.get_experiment_by_name("mnist-exp").experiment_id
            users.grant_user_permission("bob", "experiment", experiment_id, "DENY")
        denied = run_cli(*tiny, runs_dir=runs_dir, env=bob)
        assert (denied.returncode, denied.stderr) == (
            2, f"{server} denied user bob permission to use mlflow.experiment=mnist-exp; its admin can grant EDIT on "
               "the experiment\n"), denied.stderr[-3000:]
        printed.append(denied.stdout + denied.stderr)
        with signed_in("admin", ADMIN_SECRET):
            assert len(all_runs(client)) == len(runs)

    assert not where_secrets_appear([ADMIN_SECRET, ALICE_SECRET, BOB_SECRET, WRONG_SECRET], "".join(printed), runs,
                                    [runs_dir, server_dir])


@contextlib.contextmanager
def basic_auth_server(folder: Path):
    """README's `mlflow server --app-name basic-auth` with its `basic_auth.ini`, on a free port of 127.0.0.1, its
    stores in `folder` (mlflow.db, basic_auth.db, artifacts/; the server runs there): its URL once /health answers.
    The admin password reaches it only through MLFLOW_AUTH_ADMIN_PASSWORD."""
    config = folder / "basic_auth.ini"
    config.write_text(readme_auth_config(folder / "basic_auth.db"))
    environment = {key: value for key, value in os.environ.items() if key not in CREDENTIAL_VARIABLES}
    environment.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
                       MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_SECRET)
    port = free_port()
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "basic-auth",
             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=environment,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/health", server)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def cheaper_password_checks(database: Path, passwords: dict[str, str]) -> None:
    """Each user's password hashed again with 1,000 PBKDF2 rounds, in the server's user database. The server
    checks the hash on every request, and MLflow's (werkzeug's scrypt, ~0.12 s each here) made most of this
    test's minutes: a run sends hundreds of requests. What is tested (who is refused, who is served, where
    a password appears) does not depend on the hash's cost."""
    import sqlite3

    from werkzeug.security import generate_password_hash

    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        for user, password in passwords.items():
            changed = connection.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                                         (generate_password_hash(password, "pbkdf2:sha256:1000"), user)).rowcount
            assert changed == 1, f"no user {user} in {database}"


def readme_auth_config(database: Path) -> str:
    """The `basic_auth.ini` README's recipe writes, with its user database at `database`."""
    (text,) = re.findall(r"basic_auth\.ini <<'EOF'\n(.*?\n)EOF\n", (PROJECT_ROOT / "README.md").read_text(), re.S)
    assert "default_permission = EDIT" in text and "admin_password" not in text
    return re.sub(r"^database_uri = .*$", f"database_uri = sqlite:///{database}", text, flags=re.M)


def credentials(user: str, password: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}


@contextlib.contextmanager
def signed_in(user: str, password: str):
    """This process's MLflow clients send `user`'s credentials inside the block (they read the environment)."""
    with mock.patch.dict(os.environ, credentials(user, password)):
        yield


def answer_status(url: str, user: str, password: str) -> int:
    """The HTTP status of a request to the server's REST API with these credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def runs_command(url: str, env: dict[str, str] | None) -> subprocess.CompletedProcess:
    """`python -m mnist_exp.runs --tracking-uri URL`, with `env` added to this process's environment."""
    return subprocess.run([sys.executable, "-m", "mnist_exp.runs", "--tracking-uri", url], capture_output=True,
                          text=True, timeout=120, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
