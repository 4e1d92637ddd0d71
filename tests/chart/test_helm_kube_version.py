"""The project's helm knows its Kubernetes: `helm template` works without --kube-version, as released helm does.

helm assumes a Kubernetes version when it has no cluster (`helm template`, `helm lint`). Its release build
stamps that version from the k8s.io/client-go of its go.mod; e2e/binaries.sh stamps the same (HELM_K8S).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from e2e.chart_support import CHART_DIR, Helm, one, parse_manifests

CHART_YAML = """apiVersion: v2
name: capabilities
version: 0.1.0
"""
TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: capabilities
data:
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
"""


def _client_go_minor(helm_version: str, cwd: Path) -> str:
    """1.<minor> of the k8s.io/client-go in helm's go.mod (the module cache has it: helm was built from it)."""
    env = dict(os.environ, GOFLAGS="-mod=mod")
    info = subprocess.run(
        ["go", "mod", "download", "-json", f"helm.sh/helm/v3@{helm_version}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    go_mod = Path(json.loads(info.stdout)["GoMod"]).read_text()
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", go_mod, re.MULTILINE)
    assert match, "helm's go.mod requires no k8s.io/client-go"
    return f"1.{match.group(1)}"


def test_template_of_the_chart_needs_no_kube_version(helm: Helm) -> None:
    # the chart requires kubeVersion >=1.29; an unstamped helm assumes v1.20 and refuses it
    result = helm("template", "kubeforge", str(CHART_DIR), "--namespace", "kubeforge-system")
    assert one(parse_manifests(result.stdout), "Deployment")["metadata"]["name"]


def test_default_kubernetes_version_is_the_one_of_helms_client_go(helm: Helm, tmp_path: Path) -> None:
    stamp = (helm.binary.parent / ".helm.version").read_text().strip()  # e.g. v3.19.5+k8s1.34
    helm_version, _, k8s = stamp.partition("+k8s")
    assert k8s == _client_go_minor(helm_version, tmp_path), f"HELM_K8S in e2e/binaries.sh is stale: {stamp}"
    chart = tmp_path / "capabilities"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(CHART_YAML)
    (chart / "templates" / "configmap.yaml").write_text(TEMPLATE)
    rendered = parse_manifests(helm("template", "capabilities", str(chart)).stdout)
    assert one(rendered, "ConfigMap")["data"]["kubeVersion"] == f"v{k8s}.0"
