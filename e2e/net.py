"""Loopback networking helpers: free ports and HTTP probes."""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.error
import urllib.request


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open at once so the kernel cannot repeat one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def http_status(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> int:
    """The HTTP status of a GET, or 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ssl.SSLError):
        return 0


def component_health(port: int) -> int:
    """Status of /healthz on a control-plane component's secure port (self-signed certificate)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http_status(f"https://127.0.0.1:{port}/healthz", context)
