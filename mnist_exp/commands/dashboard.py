"""`python -m mnist_exp.dashboard`: optuna-dashboard on the searches' study storage, on 127.0.0.1 only.

The storage is checked first: optuna-dashboard opens any URL it is given, and at a mistyped or not yet created
SQLite path it would create an empty file and show no study, without a word.

The dashboard's own WSGI app (`optuna_dashboard.wsgi`, its public API) is served here rather than through its
command: that one runs gunicorn, which since 25.1 puts a control socket in the home folder (one path that every
dashboard started shares), or else wsgiref without catching Ctrl-C, which ends in a traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from urllib.parse import urlparse

from mnist_exp.commands.arguments import OneLineParser
from mnist_exp.config.config_checks import integer
from mnist_exp.config.paths import sqlite_file
from mnist_exp.multirun.search.search_space import default_storage_url
from mnist_exp.system.credentials import connection_url, take_password
from mnist_exp.system.errors import ExperimentError, report, root_cause
from mnist_exp.system.net import CONNECT_TIMEOUT_S
from mnist_exp.system.redaction import mask

# The dashboard can delete studies and edit notes, with no login: never reachable from another machine.
HOST = "127.0.0.1"
DEFAULT_PORT = 8080  # optuna-dashboard's own default; not the MLflow UI's 5000, so both can be open at once
SEARCH_COMMAND = "python -m mnist_exp -m hparams_search=optuna"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m mnist_exp.dashboard", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default: %(default)s)")
    parser.add_argument("--storage", metavar="URL",
                        help="an Optuna storage (default: the one searches write to, sqlite:///<runs_dir>/optuna.db)")
    args = parser.parse_args(argv)
    try:
        problem = integer(1, 65_535)(args.port)
        if problem is not None:
            raise ExperimentError(f"--port {args.port} is invalid: expected {problem}")
        url = checked_storage(args.storage or default_storage_url())
        storage, studies = open_storage(url)
        server = serve(storage, args.port)
    except ExperimentError as error:
        return report(str(error))
    print(f"Optuna dashboard of {mask(url)} ({studies} {'study' if studies == 1 else 'studies'}) "
          f"at http://{HOST}:{args.port}/dashboard (Ctrl-C stops it)", flush=True)
    with server, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a dashboard is meant to end
        server.serve_forever()
    return 0


def checked_storage(url: str) -> str:
    """`url` with its password masked (and moved to the variable its driver reads), once it is known to name
    a storage that exists; one ExperimentError line when it does not."""
    url = take_password(url, "--storage")
    scheme = urlparse(url).scheme
    if not scheme:
        raise ExperimentError(f"--storage {mask(url)} is invalid: expected a URL, e.g. sqlite:///runs/optuna.db "
                              "or postgresql://user@host/optuna")
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        raise ExperimentError(f"no study storage at {mask(url)}; run a search first: {SEARCH_COMMAND}")
    return url


def open_storage(url: str):
    """(the storage at `url`, the number of its studies); one ExperimentError line when it cannot be read: at the
    start, rather than as errors on the page."""
    # libpq waits forever for a server that accepts the connection but never answers.
    os.environ.setdefault("PGCONNECT_TIMEOUT", str(int(CONNECT_TIMEOUT_S)))
    import optuna

    try:
        # As optuna-dashboard opens one: no tables created, no schema upgrade.
        storage = optuna.storages.RDBStorage(connection_url(url), skip_table_creation=True,
                                             skip_compatibility_check=True)
        return storage, len(storage.get_all_studies())
    except Exception as error:  # SQLAlchemy and driver errors: an unreachable server, a database of something else
        raise ExperimentError(f"cannot read the Optuna storage {mask(url)}: {root_cause(error)}") from None


def serve(storage, port: int):
    """A threaded HTTP server of the dashboard of `storage`, bound to HOST:port."""
    try:
        import optuna_dashboard
    except ImportError:
        raise ExperimentError("optuna-dashboard is not installed: make dashboard installs it "
                              "(pip install -e '.[dashboard]')") from None
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True  # a request still open does not hold up Ctrl-C

    class Handler(WSGIRequestHandler):
        def log_message(self, format: str, *args) -> None:
            pass  # the page polls the study every few seconds: a line per request would bury the terminal

    try:
        return make_server(HOST, port, optuna_dashboard.wsgi(storage), server_class=Server, handler_class=Handler)
    except OSError as error:
        raise ExperimentError(f"cannot serve on {HOST}:{port}: {error.strerror}; choose another --port") from None

