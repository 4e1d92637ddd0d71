"""Small helpers to drive a cluster from tests and scripts: kubectl, polling, conditions."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class KubectlError(RuntimeError):
    """kubectl exited non-zero; the message carries the command and its stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class Kubectl:
    """kubectl bound to one cluster's kubeconfig (never the user's ~/.kube/config).

    `cache_dir` keeps the discovery cache next to the cluster: clusters come and
    go on recycled ports, and a cache shared through ~/.kube/cache could remember
    another cluster's resources under the same host:port.
    """

    kubeconfig: Path
    cache_dir: Path | None = None
    binary: str = "kubectl"

    def __call__(
        self,
        *args: str,
        namespace: str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl ARGS`; raise KubectlError with stderr on failure unless check=False."""
        argv = [self.binary, "--kubeconfig", str(self.kubeconfig)]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        if namespace is not None:
            argv += ["--namespace", namespace]
        argv += args
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result.returncode, result.stderr)
        return result

    def json(self, *args: str, namespace: str | None = None) -> Any:
        """Run `kubectl ARGS -o json` and return the parsed document."""
        return json.loads(self(*args, "-o", "json", namespace=namespace).stdout)

    def apply(
        self, source: str | Path, namespace: str | None = None, server_side: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply` a file, a folder or a YAML/JSON text (anything with a newline or `{`).

        Client-side apply by default, as a user would type it; `server_side=True` for
        objects too large for the last-applied annotation (CRDs).
        """
        args = ["apply"]
        if server_side:
            args += ["--server-side", "--force-conflicts"]
        if isinstance(source, Path) or ("\n" not in source and "{" not in source):
            return self(*args, "-f", str(source), namespace=namespace)
        return self(*args, "-f", "-", namespace=namespace, input=source)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Call `predicate` until it returns something truthy, and return that; TimeoutError otherwise.

    An exception from the predicate counts as "not yet" (the object may not exist
    yet) and is chained to the TimeoutError if it was the last outcome.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    last_value: object = None
    while True:
        try:
            value = predicate()
        except Exception as error:  # noqa: BLE001 - any failure means "not yet"; re-raised on timeout
            last_error, last_value = error, None
        else:
            if value:
                return value
            last_error, last_value = None, value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {text} (last value: {last_value!r})"
            ) from last_error
        time.sleep(interval)


def event_messages(kubectl: Kubectl, namespace: str, kind: str, name: str, reason: str) -> list[str]:
    """The messages of the Events with this reason about one object."""
    items = kubectl.json("get", "events", "--field-selector", f"reason={reason}", namespace=namespace)[
        "items"
    ]
    return [
        e["message"]
        for e in items
        if (e["involvedObject"]["kind"], e["involvedObject"]["name"]) == (kind, name)
    ]


def find_condition(obj: dict[str, Any], condition_type: str) -> dict[str, Any] | None:
    """The `status.conditions` entry of the given type, or None."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def wait_condition(
    kubectl: Kubectl,
    kind: str,
    name: str,
    condition_type: str,
    status: str = "True",
    namespace: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until the object's condition `condition_type` has `status`; return the object.

    The timeout message shows the object's conditions as last seen, which is
    usually the explanation.
    """
    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = kubectl.json("get", kind, name, namespace=namespace)
        condition = find_condition(last, condition_type)
        return last if condition and condition.get("status") == status else None

    def describe() -> str:
        conditions = (last.get("status") or {}).get("conditions")
        return f"{kind}/{name} condition {condition_type}={status} (conditions: {conditions})"

    return wait_for(check, timeout=timeout, interval=0.25, message=describe)


def create_namespaces(kubectl: Kubectl, *names: str) -> None:
    """Create namespaces that can take pods at once: the ServiceAccount admission plugin refuses pods
    until the controller has made each one's `default`."""
    for name in names:
        kubectl("create", "namespace", name)
    wait_for(
        lambda: all(
            kubectl("get", "serviceaccount", "default", namespace=name, check=False).returncode == 0
            for name in names
        ),
        timeout=30,
        message=f"the default ServiceAccounts of {', '.join(names)}",
    )


@contextmanager
def fresh_namespace(kubectl: Kubectl, name: str) -> Iterator[str]:
    """Create a labelled namespace that can take pods at once, and delete it afterwards (not waiting)."""
    create_namespaces(kubectl, name)
    kubectl("label", "namespace", name, "kubeforge.io/e2e=true")
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def _crd_names(source: str | Path) -> list[str]:
    """CRD names: `source` itself, or those defined in a YAML file or a folder of them."""
    path = Path(source)
    if not path.exists():
        return [str(source).removeprefix("crd/")]
    import yaml

    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [
        doc["metadata"]["name"]
        for f in files
        for doc in yaml.safe_load_all(f.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]


def wait_established(kubectl: Kubectl, *sources: str | Path, timeout: float = 60.0) -> None:
    """Wait until each CRD (a name, or the CRDs of a file or folder) is Established.

    Polled, not `kubectl wait`: that fails at once ("accessor error: <nil>") on a CRD created so
    recently that its status has no conditions yet.
    """
    for name in [n for s in sources for n in _crd_names(s)]:

        def established(crd: str = name) -> bool:
            result = kubectl("get", "crd", crd, "-o", "json", check=False)
            if result.returncode != 0:
                return False
            conditions = (json.loads(result.stdout).get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)

        wait_for(established, timeout=timeout, message=f"crd/{name} Established")
