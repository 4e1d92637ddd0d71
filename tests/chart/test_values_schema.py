"""values.schema.json refuses what would otherwise be silently ignored or break the operator at run time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.chart_support import CHART_DIR, Helm, HelmError

SCHEMA = json.loads((CHART_DIR / "values.schema.json").read_text())

# (values, a fragment of helm's message): each is refused by `helm template` (so by `helm install` too).
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": ({"replicaCount": 1}, "additional properties 'replicaCount' not allowed"),
    "misspelt nested key": ({"image": {"repo": "x"}}, "additional properties 'repo' not allowed"),
    "negative replicas": ({"replicas": -1}, "/replicas"),
    "lease name not a DNS name": ({"leaderElection": {"leaseName": "Leader_1"}}, "/leaderElection/leaseName"),
    "unknown leader election key": (
        {"leaderElection": {"leaseDuration": 15}},
        "additional properties 'leaseDuration' not allowed",
    ),
    "spread constraint without a topology key": (
        {"topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}]},
        "/topologySpreadConstraints",
    ),
    "PDB maxUnavailable as a word": (
        {"podDisruptionBudget": {"maxUnavailable": "one"}},
        "/podDisruptionBudget/maxUnavailable",
    ),
    "replicas as a string": ({"replicas": "1"}, "/replicas"),
    "namespace not a DNS label": ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    "the same namespace twice": ({"watchNamespaces": ["a", "a"]}, "/watchNamespaces"),
    "watchNamespaces as a string": ({"watchNamespaces": "a,b"}, "/watchNamespaces"),
    "unknown pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "digest without algorithm": ({"image": {"digest": "abc123"}}, "/image/digest"),
    "toggle as a string": ({"rbac": {"keda": "yes"}}, "/rbac/keda"),
    "resources without a memory limit": ({"resources": {"limits": {"memory": None, "cpu": "1"}}}, "memory"),
    "quantity that is not one": (
        {"resources": {"requests": {"memory": "lots"}}},
        "/resources/requests/memory",
    ),
    "unknown resources key": ({"resources": {"claims": []}}, "additional properties 'claims' not allowed"),
    "prometheus address without scheme": ({"prometheusAddress": "prometheus:9090"}, "/prometheusAddress"),
    "negative resync": ({"resyncSeconds": -1}, "/resyncSeconds"),
    "zero fill retry": ({"fillRetrySeconds": 0}, "/fillRetrySeconds"),
    "model probe as a string": ({"modelProbe": "false"}, "/modelProbe"),
    "service monitor interval not a duration": (
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        "/metrics/serviceMonitor/interval",
    ),
    "PDB over 100%": (
        {"podDisruptionBudget": {"maxUnavailable": "150%"}},
        "/podDisruptionBudget/maxUnavailable",
    ),
    "service account name with capitals": ({"serviceAccount": {"name": "Operator"}}, "/serviceAccount/name"),
    "annotation value not a string": ({"podAnnotations": {"a": 1}}, "/podAnnotations/a"),
    "empty Triton image": ({"tritonImage": ""}, "/tritonImage"),
    "unknown network policy peer": (
        {"networkPolicy": {"metricsFrom": [{"pods": {}}]}},
        "/networkPolicy/metricsFrom/0",
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_values_are_refused(helm: Helm, case: str) -> None:
    values, fragment = INVALID[case]
    with pytest.raises(HelmError) as raised:
        helm.template(values)
    assert "values don't meet the specifications of the schema" in raised.value.stderr
    assert fragment in raised.value.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 0},
        {"replicas": 1},
        {"replicas": 5},  # any number: one leads, the others stand by
        {"leaderElection": {"leaseName": "ml-platform.kubeforge-leader"}},
        {"topologySpreadConstraints": []},
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
        {"watchNamespaces": ["team-a", "b2"]},
        {"image": {"tag": "0.2.0-rc.1", "pullPolicy": "Always"}},
        {"resources": {"requests": {"cpu": 0.5, "memory": "300M"}, "limits": {"memory": "1Gi"}}},
        {"podDisruptionBudget": {"enabled": True, "minAvailable": 1}},
        {"resyncSeconds": 0.5, "clusterDomain": "corp.example"},
        {"networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}},
        {"global": {"imageRegistry": "ignored"}},  # what a parent chart passes
    ],
    ids=lambda v: ",".join(v),
)
def test_valid_values_are_accepted(helm: Helm, values: dict[str, Any]) -> None:
    assert helm.template(values)


def test_top_level_and_every_object_value_are_closed() -> None:
    assert SCHEMA["additionalProperties"] is False
    values_objects = [
        "image",
        "resources",
        "serviceAccount",
        "rbac",
        "metrics",
        "leaderElection",
        "podDisruptionBudget",
        "networkPolicy",
    ]
    for key in values_objects:
        assert SCHEMA["properties"][key]["additionalProperties"] is False, key
    metrics = SCHEMA["properties"]["metrics"]["properties"]
    assert metrics["service"]["additionalProperties"] is False
    assert metrics["serviceMonitor"]["additionalProperties"] is False


def test_every_default_value_is_described_by_the_schema() -> None:
    import yaml

    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert set(defaults) <= set(SCHEMA["properties"])


def test_replicas_have_no_maximum() -> None:
    replicas = SCHEMA["properties"]["replicas"]
    assert replicas["minimum"] == 0 and "maximum" not in replicas
