"""cyclonus's NetworkPolicy engine on our policies: who may connect to whom, on which port.

    verdicts = allowed(policies, [Connection(src, dst, 8000)])

The local cluster enforces no NetworkPolicy (kwok runs no CNI), so the operator's policies are
judged by an existing engine's semantics: our few-line Go CLI around cyclonus's matcher
(e2e/netpol/main.go), built by e2e/binaries.sh from the Go module proxy and cached under
~/.cache/kubeforge/bin; a missing one is built, never skipped.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from e2e.cluster import tool_binary


@dataclass(frozen=True)
class Pod:
    """A pod (namespace and labels, as the policy engine sees it), or an address outside the cluster."""

    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = "10.244.0.10"

    def wire(self) -> dict[str, Any]:
        ns_labels = {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}
        return {
            "namespace": self.namespace,
            "namespaceLabels": ns_labels,
            "podLabels": dict(self.labels),
            "ip": self.ip,
        }


@dataclass(frozen=True)
class Connection:
    source: Pod
    destination: Pod
    port: int
    protocol: str = "TCP"


def allowed(policies: Sequence[Mapping[str, Any]], connections: Sequence[Connection]) -> list[bool]:
    """Whether each connection is allowed (ingress and egress) under exactly these policies."""
    payload = {
        "policies": list(policies),
        "traffic": [
            {
                "source": c.source.wire(),
                "destination": c.destination.wire(),
                "port": c.port,
                "protocol": c.protocol,
            }
            for c in connections
        ],
    }
    result = subprocess.run(
        [str(tool_binary("netpol"))],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"netpol exited {result.returncode}: {result.stderr}")
    return [bool(v["allowed"]) for v in json.loads(result.stdout)]
