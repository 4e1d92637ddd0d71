"""Loopback networking helpers: free ports and HTTP probes."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request

from kubeforge.testing.triton import free_ports

__all__ = ["component_health", "free_ports", "http_status"]


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
