"""The Helm chart from tests: the pinned helm binary, `helm template` parsed, install/upgrade/uninstall.

    helm = Helm.ensure()
    docs = helm.template(values={"watchNamespaces": ["a", "b"]})
    helm.install("kubeforge", namespace="kubeforge-system", kubeconfig=path, values={...})

helm comes from e2e/binaries.sh (built from the Go module proxy, cached under
~/.cache/kubeforge/bin or $KUBEFORGE_CACHE/bin); a missing one is built, never skipped.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.kube import Kubectl

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARIES_SCRIPT = REPO_ROOT / "e2e" / "binaries.sh"
CHART_DIR = REPO_ROOT / "charts" / "kubeforge"
# The Kubernetes version charts are rendered for (the local control plane's, e2e/binaries.sh K8S_VERSION).
# helm built from the Go module reports v1.20 as its default, below the chart's kubeVersion.
KUBE_VERSION = "1.34.0"

Manifest = dict[str, Any]


class HelmError(RuntimeError):
    """helm exited non-zero; the message carries the command and its stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def ensure_helm(cache_dir: Path | None = None) -> Path:
    """The pinned helm binary, built by e2e/binaries.sh when missing (milliseconds when cached)."""
    cache = cache_dir or Path(os.environ.get("KUBEFORGE_CACHE") or Path.home() / ".cache" / "kubeforge")
    env = dict(os.environ, KUBEFORGE_CACHE=str(cache))
    result = subprocess.run(
        ["bash", str(BINARIES_SCRIPT), "helm"], env=env, stdout=subprocess.PIPE, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{BINARIES_SCRIPT} helm failed with exit status {result.returncode}")
    helm = Path(lines[-1]) / "helm"
    if not helm.is_file():
        raise RuntimeError(f"{BINARIES_SCRIPT} left no helm in {helm.parent}")
    return helm


@dataclass(frozen=True)
class Helm:
    """helm bound to one binary and one chart, with its own config/cache folders (never ~/.config/helm)."""

    binary: Path
    home: Path
    chart: Path = CHART_DIR

    @classmethod
    def ensure(cls, home: Path | None = None) -> Helm:
        return cls(ensure_helm(), home or Path(tempfile.mkdtemp(prefix="kubeforge-helm-")))

    def __call__(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        env = dict(
            os.environ,
            HELM_CONFIG_HOME=str(self.home / "config"),
            HELM_CACHE_HOME=str(self.home / "cache"),
            HELM_DATA_HOME=str(self.home / "data"),
        )
        env.pop("KUBECONFIG", None)
        argv = [str(self.binary), *args]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise HelmError(args, result.returncode, result.stderr)
        return result

    def _values_args(self, values: Mapping[str, Any] | None) -> list[str]:
        if not values:
            return []
        self.home.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="values-", suffix=".yaml", dir=self.home)
        with os.fdopen(fd, "w") as file:
            yaml.safe_dump(dict(values), file, sort_keys=False)
        return ["--values", name]

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        release: str = "kubeforge",
        namespace: str = "kubeforge-system",
        include_crds: bool = False,
    ) -> list[Manifest]:
        """`helm template` parsed into its documents (empty documents dropped)."""
        return parse_manifests(self.template_text(values, release, namespace, include_crds))

    def template_text(
        self,
        values: Mapping[str, Any] | None = None,
        release: str = "kubeforge",
        namespace: str = "kubeforge-system",
        include_crds: bool = False,
    ) -> str:
        args = [
            "template",
            release,
            str(self.chart),
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
        ]
        if include_crds:
            args.append("--include-crds")
        return self(*args, *self._values_args(values)).stdout

    def lint(self, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        return self(
            "lint", "--strict", "--kube-version", KUBE_VERSION, str(self.chart), *self._values_args(values)
        )

    def install(
        self,
        release: str,
        namespace: str,
        kubeconfig: Path,
        values: Mapping[str, Any] | None = None,
        upgrade: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """`helm install --create-namespace` (or `helm upgrade` with `upgrade=True`), without waiting."""
        verb = ["upgrade"] if upgrade else ["install", "--create-namespace"]
        return self(
            *verb,
            release,
            str(self.chart),
            "--namespace",
            namespace,
            *self._values_args(values),
            kubeconfig=kubeconfig,
        )

    def uninstall(self, release: str, namespace: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
        return self("uninstall", release, "--namespace", namespace, "--wait", kubeconfig=kubeconfig)


def parse_manifests(text: str) -> list[Manifest]:
    """The non-empty YAML documents of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def one(manifests: Sequence[Manifest], kind: str) -> Manifest:
    """The single manifest of `kind`; AssertionError when there are none or several."""
    found = of_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# -- running the operator as the chart's ServiceAccount -------------------------------------------


def service_account_kubeconfig(kubectl: Kubectl, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount `namespace/name` (a TokenRequest token).

    The same server and CA as `kubectl`'s admin kubeconfig. A real token rather than `as:` impersonation:
    the `kubernetes` client and kopf ignore a kubeconfig's `as:`, so an impersonating kubeconfig would
    silently run the operator with the admin's rights.
    """
    token = kubectl("create", "token", name, "--duration=2h", namespace=namespace).stdout.strip()
    admin = yaml.safe_load(kubectl.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])["cluster"]
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def can_i(
    kubectl: Kubectl,
    user: str,
    verb: str,
    resource: str,
    namespace: str | None = None,
    subresource: str | None = None,
) -> bool:
    """`kubectl auth can-i VERB RESOURCE --as USER` (in `namespace`, or across all namespaces when None)."""
    args = ["auth", "can-i", verb, resource, f"--as={user}"]
    args += ["--all-namespaces"] if namespace is None else []
    args += [f"--subresource={subresource}"] if subresource else []
    result = kubectl(*args, namespace=namespace, check=False)
    answer = result.stdout.strip()
    if answer not in ("yes", "no"):
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stdout}{result.stderr}")
    return answer == "yes"
