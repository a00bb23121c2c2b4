"""Whether a host answers, decided within a few seconds even when DNS hangs or a server never replies."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

# How long a store, a tracking server, a Ray head or a download host gets to answer before we say it does not.
CONNECT_TIMEOUT_S = 5.0
# How long a server that took the connection gets to answer one small request. Longer than connecting: a busy
# server answers late (a basic-auth server hashes the password of every request; a sweep's workers start at once).
ANSWER_TIMEOUT_S = 10.0
# The most of an answer a probe reads: enough to tell JSON from a web page.
PROBE_BODY_BYTES = 64 * 1024
T = TypeVar("T")


def can_connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds, name lookup included."""
    def attempt() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    try:
        return bool(_within(timeout, attempt, default=False))
    except OSError:
        return False


@dataclass(frozen=True)
class HttpAnswer:
    """What a GET received: an HTTP status and the start of the body, or why there was none."""

    status: int | None = None  # None: no HTTP answer
    reason: str = ""  # the status line's words, or why nothing came (the socket's or the parser's error)
    content_type: str = ""
    body: bytes = b""
    timed_out: bool = False  # no whole answer within the timeout
    tls_failed: bool = False  # the TLS handshake failed (a certificate this process does not trust)


def http_get(url: str, headers: Mapping[str, str], timeout: float = ANSWER_TIMEOUT_S) -> HttpAnswer:
    """GET `url`: its answer within `timeout` seconds, name lookup included (a server that accepts the
    connection and never replies, or replies a byte a minute, is no answer). Redirects are followed and
    proxies of the environment used, as MLflow's HTTP client does."""
    import ssl
    import urllib.error
    import urllib.request

    def attempt() -> HttpAnswer:
        request = urllib.request.Request(url, headers=dict(headers), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return HttpAnswer(reply.status, reply.reason, reply.headers.get_content_type(),
                                  reply.read(PROBE_BODY_BYTES))
        except urllib.error.HTTPError as error:
            with error:
                return HttpAnswer(error.code, str(error.reason), error.headers.get_content_type(), b"")
        except urllib.error.URLError as error:
            if isinstance(error.reason, ssl.SSLError):
                return HttpAnswer(reason=str(error.reason), tls_failed=True)
            if isinstance(error.reason, TimeoutError):
                return HttpAnswer(timed_out=True)
            return HttpAnswer(reason=str(error.reason))
        except TimeoutError:
            return HttpAnswer(timed_out=True)
        except (OSError, ValueError) as error:  # a reset connection, a status line that is not HTTP
            return HttpAnswer(reason=f"{type(error).__name__}: {error}".rstrip(": "))

    return _within(timeout, attempt, default=HttpAnswer(timed_out=True))


def _within(timeout: float, attempt: Callable[[], T], default: T) -> T:
    """attempt()'s result, or `default` when it takes longer than `timeout` seconds (plus a second for the
    socket's own timeout to fire first). getaddrinfo ignores socket timeouts, and a slow server resets a
    socket timeout with every byte, so the attempt runs in a thread we stop waiting for."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, attempt()))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((False, error))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout + 1)
    if not outcome:
        return default
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value
