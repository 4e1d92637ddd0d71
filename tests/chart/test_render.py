"""The chart lints, renders valid Kubernetes objects, and runs the operator locked down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from e2e.chart_support import CHART_DIR, KUBE_VERSION, Helm, Manifest, of_kind, one
from tests.chart.conftest import VALUE_SETS

ROOT = Path(__file__).resolve().parents[2]


def _container(manifests: list[Manifest]) -> dict[str, Any]:
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    container: dict[str, Any] = pod["containers"][0]
    return container


def _env(manifests: list[Manifest]) -> dict[str, str]:
    """The container's literal environment (the operator's settings)."""
    return {e["name"]: e["value"] for e in _container(manifests)["env"] if "value" in e}


def _downward_env(manifests: list[Manifest]) -> dict[str, str]:
    """The container's environment from the downward API: name -> field path."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in _container(manifests)["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }


def _pod(manifests: list[Manifest]) -> dict[str, Any]:
    pod: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint_strict(helm: Helm, name: str) -> None:
    result = helm.lint(VALUE_SETS[name])
    assert "0 chart(s) failed" in result.stdout, result.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    manifests = rendered[name]
    assert manifests
    for manifest in manifests:
        if manifest["kind"] == "ServiceMonitor":
            continue  # not a built-in kind: checked by test_service_monitor_scrapes_the_metrics_service
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(
                f"{manifest['kind']}/{manifest['metadata']['name']}: {err.message} at {list(err.path)}"
            )


@pytest.mark.parametrize("name", VALUE_SETS)
def test_names_labels_and_namespace(rendered: dict[str, list[Manifest]], name: str) -> None:
    for manifest in rendered[name]:
        meta = manifest["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "kubeforge"
        assert labels["app.kubernetes.io/instance"] == "kubeforge"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "kubeforge-0.1.0"
        if manifest["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            assert meta["namespace"] == "kubeforge-system", manifest["kind"]


def test_chart_crds_are_the_generated_crds() -> None:
    chart_crds = sorted(p.name for p in (CHART_DIR / "crds").iterdir())
    assert chart_crds == sorted(p.name for p in (ROOT / "crds").iterdir())
    for name in chart_crds:
        assert (CHART_DIR / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kubeforge/crds/{name} differs from crds/{name}: run `make manifests`"
        )


def test_crds_are_installed_with_the_chart(helm: Helm) -> None:
    manifests = helm.template(include_crds=True)
    names = {m["metadata"]["name"] for m in of_kind(manifests, "CustomResourceDefinition")}
    assert names == {"modeldeployments.kubeforge.io", "trainingjobs.kubeforge.io"}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["kubeVersion"] == ">=1.29.0-0"
    assert chart["appVersion"] == "0.1.0"


def test_kube_version_below_the_minimum_is_refused(helm: Helm) -> None:
    result = helm("template", "x", str(CHART_DIR), "--kube-version", "1.28.9", check=False)
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_operator_pod_is_locked_down(rendered: dict[str, list[Manifest]], name: str) -> None:
    deployment = one(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(rendered[name])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in security or security["privileged"] is False
    # the one writable path
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    assert pod["automountServiceAccountToken"] is True
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key]), key
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_operator_runs_with_leader_election_liveness_and_metrics(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    from kubeforge.cli import build_parser

    deployment = one(rendered[name], "Deployment")
    assert deployment["spec"]["replicas"] == VALUE_SETS[name].get("replicas", 2)
    # a new pod starts as a standby before an old one stops
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    container = _container(rendered[name])
    args = container["args"]
    assert args[0] == "run"
    assert "--liveness=http://0.0.0.0:8080/healthz" in args
    assert "--metrics-port=8081" in args
    namespaces = [a.removeprefix("--namespace=") for a in args if a.startswith("--namespace=")]
    assert namespaces == VALUE_SETS[name].get("watchNamespaces", [])
    # the operator's own parser reads the arguments: always leader election, on the release's Lease
    parsed = build_parser().parse_args(args)
    assert parsed.leader_elect is True
    assert parsed.leader_election_namespace == "kubeforge-system"
    assert parsed.leader_election_id == "kubeforge-leader"
    # in-flight reconciles get --shutdown-seconds, then the Lease is released before the kubelet's SIGKILL
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert (parsed.shutdown_seconds, grace) == (20, 30)
    # the replica's identity in the Lease, and the Lease's default namespace
    assert _downward_env(rendered[name]) == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
    }
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    assert ports["metrics"] == 8081
    assert "command" not in container  # the image's ENTRYPOINT: kubeforge


def test_one_replica_still_elects_itself(helm: Helm) -> None:
    manifests = helm.template({"replicas": 1})
    assert one(manifests, "Deployment")["spec"]["replicas"] == 1
    assert "--leader-elect" in _container(manifests)["args"]


def test_replicas_are_spread_over_nodes_by_default(rendered: dict[str, list[Manifest]]) -> None:
    pod = _pod(rendered["default"])
    pod_labels = one(rendered["default"], "Deployment")["spec"]["template"]["metadata"]["labels"]
    (spread,) = pod["topologySpreadConstraints"]
    selector = spread.pop("labelSelector")["matchLabels"]
    assert spread == {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",  # a preference: a one-node cluster still runs every replica
        "matchLabelKeys": ["pod-template-hash"],
    }
    assert selector == {
        "app.kubernetes.io/name": "kubeforge",
        "app.kubernetes.io/instance": "kubeforge",
        "app.kubernetes.io/component": "operator",
    }
    assert selector.items() <= pod_labels.items()
    assert "affinity" not in pod


def test_user_spread_and_affinity_are_kept(rendered: dict[str, list[Manifest]], helm: Helm) -> None:
    pod = _pod(rendered["ha"])
    assert pod["topologySpreadConstraints"] == VALUE_SETS["ha"]["topologySpreadConstraints"]
    assert pod["affinity"] == VALUE_SETS["ha"]["affinity"]
    assert "topologySpreadConstraints" not in _pod(helm.template({"topologySpreadConstraints": []}))
    affinity = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "kubeforge"}},
                }
            ]
        }
    }
    pod = _pod(helm.template({"affinity": affinity}))
    assert pod["affinity"] == affinity
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"


def test_settings_are_passed_as_environment(rendered: dict[str, list[Manifest]]) -> None:
    env = _env(rendered["default"])
    assert env == {
        "KUBEFORGE_TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:25.10-py3",
        "KUBEFORGE_TRITON_VLLM_IMAGE": "nvcr.io/nvidia/tritonserver:26.02-vllm-python-py3",
        "KUBEFORGE_HELPER_IMAGE": "ghcr.io/kubeforge/kubeforge-operator:0.1.0",
        "KUBEFORGE_PROMETHEUS_ADDRESS": "http://prometheus-operated.monitoring.svc:9090",
        "KUBEFORGE_CLUSTER_DOMAIN": "cluster.local",
        "KUBEFORGE_OPERATOR_ROLLOUTS": "1",
        "KUBEFORGE_MODEL_PROBE": "true",
        "KUBEFORGE_NETWORK_POLICIES": "true",
        "KUBEFORGE_NETWORK_POLICY_INFERENCE_FROM": "[]",
        "KUBEFORGE_NETWORK_POLICY_METRICS_FROM": (
            '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]'
        ),
    }
    assert _container(rendered["default"])["image"] == "ghcr.io/kubeforge/kubeforge-operator:0.1.0"
    ha = _env(rendered["ha"])
    assert ha["KUBEFORGE_RESYNC_SECONDS"] == "300"
    assert ha["KUBEFORGE_MODEL_PROBE"] == "false"
    # pinned by digest: the init container uses the very same image
    digest = "ghcr.io/kubeforge/kubeforge-operator@sha256:" + "a" * 64
    assert _container(rendered["ha"])["image"] == digest
    assert ha["KUBEFORGE_HELPER_IMAGE"] == digest


def test_settings_are_read_by_the_operator(helm: Helm) -> None:
    from kubeforge.settings import Settings

    values = {
        "tritonImage": "registry.local/triton:1",
        "tritonVllmImage": "registry.local/triton:1-vllm",
        "helperImage": "registry.local/helper:2",
        "prometheusAddress": "http://prom.monitoring:9090",
        "clusterDomain": "example.internal",
        "resyncSeconds": 12.5,
        "fillRetrySeconds": 30,
        "modelProbe": False,
        "operatorRollouts": 3,
        "workloadNetworkPolicy": {
            "enabled": False,
            "inferenceFrom": [{"namespaceSelector": {"matchLabels": {"ingress": "true"}}}],
            "metricsFrom": [],
        },
    }
    settings = Settings.from_env(_env(helm.template(values)))
    assert (settings.triton_image, settings.helper_image) == (
        "registry.local/triton:1",
        "registry.local/helper:2",
    )
    assert settings.triton_vllm_image == "registry.local/triton:1-vllm"
    assert settings.prometheus_address == "http://prom.monitoring:9090"
    assert settings.cluster_domain == "example.internal"
    assert settings.resync_seconds == 12.5
    assert settings.fill_retry_seconds == 30
    assert settings.model_probe is False
    assert settings.operator_rollouts == 3
    assert settings.network_policies is False
    assert settings.inference_from == ({"namespaceSelector": {"matchLabels": {"ingress": "true"}}},)
    assert settings.metrics_from == ()
    # the defaults are the Settings' own
    default = Settings.from_env(_env(helm.template({})))
    assert (default.network_policies, default.inference_from, default.metrics_from) == (
        Settings().network_policies,
        Settings().inference_from,
        Settings().metrics_from,
    )


def test_replicas_zero_pauses_the_operator(helm: Helm) -> None:
    assert one(helm.template({"replicas": 0}), "Deployment")["spec"]["replicas"] == 0


def test_service_monitor_scrapes_the_metrics_service(rendered: dict[str, list[Manifest]]) -> None:
    assert not of_kind(rendered["default"], "ServiceMonitor")
    manifests = rendered["monitoring"]
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kubeforge-system"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    # and the Service reaches the operator pod's metrics port
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_service_monitor_needs_the_service(helm: Helm) -> None:
    from e2e.chart_support import HelmError

    with pytest.raises(HelmError, match=r"metrics\.service\.enabled"):
        helm.template({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pod_disruption_budget_keeps_one_replica_through_drains(
    rendered: dict[str, list[Manifest]], name: str
) -> None:
    pdb = one(rendered[name], "PodDisruptionBudget")
    # more than one replica: a drain evicts the next one only once another is Ready again
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    # a crash-looping operator pod must not block node drains
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pod_labels = one(rendered[name], "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(
    ("values", "budget"),
    [
        # one replica: minAvailable 1 would block every node drain
        ({"replicas": 1}, {"maxUnavailable": 1}),
        ({"replicas": 0}, {"maxUnavailable": 1}),
        ({"podDisruptionBudget": {"enabled": True, "minAvailable": "50%"}}, {"minAvailable": "50%"}),
        ({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 2}}, {"maxUnavailable": 2}),
        ({"replicas": 1, "podDisruptionBudget": {"enabled": True, "minAvailable": 0}}, {"minAvailable": 0}),
    ],
    ids=["one replica", "paused", "minAvailable", "maxUnavailable", "minAvailable 0"],
)
def test_pod_disruption_budget_values(helm: Helm, values: dict[str, Any], budget: dict[str, Any]) -> None:
    spec = one(helm.template(values), "PodDisruptionBudget")["spec"]
    assert {k: v for k, v in spec.items() if k in ("minAvailable", "maxUnavailable")} == budget


def test_pod_disruption_budget_can_be_turned_off(helm: Helm) -> None:
    assert not of_kind(helm.template({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_existing_service_account(helm: Helm) -> None:
    manifests = helm.template({"serviceAccount": {"create": False, "name": "platform-operator"}})
    assert not of_kind(manifests, "ServiceAccount")
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"
    assert one(manifests, "ClusterRoleBinding")["subjects"][0]["name"] == "platform-operator"
    from e2e.chart_support import HelmError

    with pytest.raises(HelmError, match=r"serviceAccount\.name is required"):
        helm.template({"serviceAccount": {"create": False}})


def test_service_account_token_is_not_mounted_by_default(rendered: dict[str, list[Manifest]]) -> None:
    # only the operator pod opts in (test_operator_pod_is_locked_down)
    assert one(rendered["default"], "ServiceAccount")["automountServiceAccountToken"] is False


def test_the_grafana_dashboard_ships_for_the_sidecar(rendered: dict[str, list[Manifest]]) -> None:
    """A ConfigMap with the sidecar's label holding the importable dashboard (its queries are run
    against a real Prometheus in e2e/test_autoscaling_loop.py)."""
    assert not [m for m in rendered["default"] if m["kind"] == "ConfigMap"]  # off by default
    dashboard = one(rendered["monitoring"], "ConfigMap")
    assert dashboard["metadata"]["name"] == "kubeforge-dashboard"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["kubeforge.json"])
    assert board == json.loads((CHART_DIR / "dashboards" / "kubeforge.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 10 and all(q.strip() for q in queries)
    titles = {p["title"] for p in board["panels"]}
    assert {"Inferences per second", "Queue time per request", "p99 request latency"} <= titles
    assert {"Replicas: desired vs ready", "GPU utilisation", "Reconcile errors per second"} <= titles
