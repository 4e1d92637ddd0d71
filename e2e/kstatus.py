"""Flux's status library (kstatus) on any object, so tests check our status against the library itself.

    assert compute(kubectl.json("get", "md", "resnet50", namespace=ns)).status == "Current"
    [job] = compute_live(kubectl, "tj", "mnist", namespace=ns)

The binary is our own few-line Go CLI around `status.Compute` of `sigs.k8s.io/cli-utils`
(e2e/kstatus/main.go), built by e2e/binaries.sh from the Go module proxy and cached under
~/.cache/kubeforge/bin (or $KUBEFORGE_CACHE/bin); a missing one is built, never skipped.
What Flux's health checks (and `flux`, `kpt`, `kapp`-style waiters) conclude is exactly what
this returns: `Current`, `InProgress`, `Failed` or `Terminating`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from e2e.cluster import ClusterError, tool_binary
from e2e.kube import Kubectl

# status.Compute returns one of these (NotFound only comes from the library's cluster readers).
Status = Literal["Current", "InProgress", "Failed", "Terminating", "NotFound", "Unknown"]


class KStatusError(RuntimeError):
    """The kstatus CLI failed, e.g. on a malformed object; the message carries its stderr."""


@dataclass(frozen=True)
class KStatus:
    """kstatus's verdict on one object, with the object's identity for assertion messages."""

    status: Status
    message: str
    kind: str = ""
    name: str = ""
    namespace: str = ""


def kstatus_binary() -> Path:
    """The kstatus CLI, built by e2e/binaries.sh when missing (milliseconds when cached)."""
    try:
        return tool_binary("kstatus")
    except ClusterError as err:
        raise KStatusError(str(err)) from None


def compute_many(objs: Iterable[Mapping[str, Any]]) -> list[KStatus]:
    """kstatus's verdict on each object, in order (one run of the CLI for all of them)."""
    items = list(objs)
    if not items:
        return []
    result = subprocess.run(
        [str(kstatus_binary())],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise KStatusError(f"kstatus exited {result.returncode}: {result.stderr.strip()}")
    verdicts = [_verdict(json.loads(line)) for line in result.stdout.splitlines() if line.strip()]
    if len(verdicts) != len(items):
        raise KStatusError(f"kstatus answered {len(verdicts)} lines for {len(items)} objects")
    return verdicts


def compute(obj: Mapping[str, Any]) -> KStatus:
    """kstatus's verdict on one object (its whole state: metadata, spec and status)."""
    [verdict] = compute_many([obj])
    return verdict


def compute_live(kubectl: Kubectl, *get_args: str, namespace: str | None = None) -> list[KStatus]:
    """kstatus's verdict on what `kubectl get GET_ARGS` returns now (one object or a List)."""
    doc = kubectl.json("get", *get_args, namespace=namespace)
    objs = doc["items"] if doc.get("kind", "").endswith("List") and "items" in doc else [doc]
    return compute_many(objs)


def _verdict(line: Mapping[str, Any]) -> KStatus:
    return KStatus(
        status=cast(Status, line["status"]),
        message=line.get("message", ""),
        kind=line.get("kind", ""),
        name=line.get("name", ""),
        namespace=line.get("namespace", ""),
    )
