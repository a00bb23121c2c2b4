"""Whether a host answers, decided within a few seconds even when DNS hangs."""

from __future__ import annotations

import socket
import threading

# How long a store, a tracking server, a Ray head or a download host gets to answer before we say it does not.
CONNECT_TIMEOUT_S = 5.0


def can_connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to host:port opens within `timeout` seconds, name lookup included."""
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except OSError:
            outcome.append(False)

    # getaddrinfo ignores socket timeouts, so the attempt runs in a thread we stop waiting for.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(outcome and outcome[0])
