"""Pod IPs for real, inside the network namespace the test run created (hack/netns.sh).

kwok gives each simulated pod an IP from its node's podCIDR (e2e/kwok/stages/pod.yaml). In the
namespace hack/netns.sh made, `add_pod_address` puts such an IP on the loopback, and the pod's
server binds it (e2e/podservers.py with `pod_ips`): a gateway or Prometheus then reaches the pod at
the address in its EndpointSlice, with no stand-in for kube-proxy's view. Outside such a namespace
it refuses: a private address is never added to the host's interfaces.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

NETNS_ENV = "KUBEFORGE_E2E_NETNS"


def inside() -> str | None:
    """None when this process runs in a network namespace hack/netns.sh created; else why not."""
    outer = os.environ.get(NETNS_ENV)
    if not outer:
        return f"{NETNS_ENV} is not set: run through hack/netns.sh (make test-e2e-netns)"
    if str(Path("/proc/self/ns/net").readlink()) == outer:
        return f"this process is in the network namespace hack/netns.sh started from ({outer})"
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        return f"this network namespace has interfaces other than lo: {interfaces}"
    return None


def add_pod_address(ip: str) -> None:
    """Put a pod's IP on this namespace's loopback (once; again is a no-op)."""
    why = inside()
    if why is not None:
        raise RuntimeError(f"refusing to add {ip}: {why}")
    done = subprocess.run(
        ["ip", "address", "add", f"{ip}/32", "dev", "lo"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 and "already assigned" not in done.stderr and "File exists" not in done.stderr:
        raise RuntimeError(f"ip address add {ip}/32 dev lo: {done.stderr.strip()}")
