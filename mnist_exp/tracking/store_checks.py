"""Whether a store can be used, decided before MLflow is imported: a folder that cannot be created, a file
that is no SQLite database or someone else's, a store file runs cannot write, a server or database that does
not answer. MLflow itself would find these out slowly (retrying for minutes) or not at all."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path
from urllib.parse import urlparse

from mnist_exp.config.paths import sqlite_file
from mnist_exp.system.errors import ExperimentError
from mnist_exp.system.net import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, can_connect, http_get

# The port a database URI without one means, per MLflow's database schemes (optionally `+driver`).
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# What the reachability check asks a tracking server: a read its REST API answers to GET as to POST, under
# the URI's own path (MLflow's client puts its requests there too).
SERVER_PROBE = "/api/2.0/mlflow/experiments/search"


def check_store_uri(uri: str, writing: bool) -> None:
    """Catches a folder that cannot be created, a file that is no SQLite database or someone else's, a
    store file runs cannot write (when `writing`), an unreachable server or database."""
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        _check_sqlite_location(uri, writing)
    elif scheme in ("http", "https"):
        _check_server_reachable(uri)
    elif scheme.split("+", 1)[0] in DATABASE_PORTS:
        _check_database_reachable(uri)


def _check_sqlite_location(uri: str, writing: bool) -> None:
    database = sqlite_file(uri)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExperimentError(f"cannot create {database.parent} for the MLflow store: {error.strerror}") from None
    if not os.access(database.parent, os.W_OK):
        raise ExperimentError(f"{database.parent} is not writable; set runs_dir or mlflow.tracking_uri elsewhere")
    if database.exists():
        with open(database, "rb") as stream:
            if database.stat().st_size and not stream.read(16).startswith(b"SQLite format 3"):
                raise ExperimentError(f"{database} is not an SQLite database (mlflow.tracking_uri={uri})")
        foreign = _foreign_tables(database)
        if foreign:
            # MLflow would add its tables to someone else's database.
            raise ExperimentError(
                f"{database} is an SQLite database but not an MLflow store (it holds {', '.join(foreign[:3])}); "
                "choose another file"
            )
        # os.access also answers for root: an immutable file (chattr +i) or a read-only mount.
        if writing and not os.access(database, os.W_OK):
            raise ExperimentError(f"{database} is read-only; runs cannot be recorded in it (mlflow.tracking_uri={uri})")


def _foreign_tables(database: Path) -> list[str]:
    """The tables of a database MLflow did not create: [] for an empty file or an MLflow store."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)) as connection:
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error as error:
        raise ExperimentError(f"{database} cannot be read as an SQLite database ({error})") from None
    if not tables or {"alembic_version", "experiments"} <= set(tables):
        return []
    return sorted(tables)


def _check_server_reachable(uri: str) -> None:
    parsed = urlparse(uri)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if not parsed.hostname or not can_connect(parsed.hostname, port):
        raise ExperimentError(
            f"cannot reach the MLflow tracking server at {uri} (no answer within {CONNECT_TIMEOUT_S:.0f} s)"
        )
    _check_server_is_mlflow(uri)


def _check_server_is_mlflow(uri: str) -> None:
    """One GET that any MLflow tracking server answers with JSON. Something else at the address (a web
    server, a proxy's 404) made MLflow fail with a traceback of its HTML; one that accepts connections and
    never replies made it wait 120 s per attempt. Left to MLflow: a 401 or 403 (authentication, said by
    server_refusal) and a TLS handshake this process cannot complete (MLflow has its own TLS settings)."""
    parsed = urlparse(uri)
    base = parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl().rstrip("/")
    answer = http_get(f"{base}{SERVER_PROBE}?max_results=1", _credential_headers(), timeout=ANSWER_TIMEOUT_S)
    probe = f"GET {parsed.path.rstrip('/')}{SERVER_PROBE}"
    if answer.status is None:
        if answer.tls_failed:
            return
        if answer.timed_out:
            raise ExperimentError(f"the server at {uri} accepts connections but did not answer {probe} within "
                                  f"{ANSWER_TIMEOUT_S:.0f} s; it is no working MLflow tracking server")
        raise ExperimentError(f"the server at {uri} accepts connections but does not answer HTTP ({probe}: "
                              f"{answer.reason})")
    if answer.status in (401, 403):
        return
    returned = f"{probe} returned {answer.status} {answer.reason}".rstrip()
    if answer.status >= 500:
        raise ExperimentError(f"the server at {uri} answers HTTP with an error ({returned}); is the MLflow "
                              "tracking server behind it running?")
    if answer.status != 200:
        raise ExperimentError(f"the server at {uri} answers HTTP but is not an MLflow tracking server ({returned})")
    if not _is_json_object(answer.body):
        raise ExperimentError(f"the server at {uri} answers HTTP but is not an MLflow tracking server ({returned}, "
                              f"{answer.content_type or 'a body'} that is no JSON object)")


def _credential_headers() -> dict[str, str]:
    """The credentials MLflow sends (basic auth, or a bearer token), from the variables it reads them from."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:  # a web page, a truncated answer, bytes that are no UTF-8
        return False


def server_refusal(uri: str, status: int, doing: str) -> ExperimentError | None:
    """What a tracking server's 401 or 403 answer (MLflow's basic-auth app) means for the user, as one line
    naming the variables to set; None for any other status. `doing` follows "permission" (`to read its runs`,
    `while starting the run`). Only the user name is shown, never a password."""
    if status not in (401, 403):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 403:
        who = f"user {user}" if user else "these credentials"
        return ExperimentError(f"the MLflow tracking server at {uri} denied {who} permission {doing}; "
                               "its admin can grant EDIT on the experiment")
    if user:
        return ExperimentError(f"the MLflow tracking server at {uri} refused user {user}: wrong user name or password "
                               "in MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return ExperimentError(f"the MLflow tracking server at {uri} refused the token in MLFLOW_TRACKING_TOKEN")
    return ExperimentError(f"the MLflow tracking server at {uri} needs authentication: set MLFLOW_TRACKING_USERNAME "
                           "and MLFLOW_TRACKING_PASSWORD")


def _check_database_reachable(uri: str) -> None:
    """MLflow retries a database that does not answer for minutes; a TCP connection says so in seconds. A
    URI without a host (a local socket) is left to the driver."""
    parsed = urlparse(uri)
    if not parsed.hostname:
        return
    port = parsed.port or DATABASE_PORTS[parsed.scheme.split("+", 1)[0]]
    if not can_connect(parsed.hostname, port):
        raise ExperimentError(
            f"cannot reach the database of the MLflow store at {parsed.hostname}:{port} "
            f"(no answer within {CONNECT_TIMEOUT_S:.0f} s)"
        )
