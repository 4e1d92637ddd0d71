"""Fixtures of the chart tests: the pinned helm (built when missing, never skipped) and the value sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.chart_support import Helm, Manifest

# The value sets every rendering test runs with (the names are the test ids).
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["a", "b"]},
    "monitoring": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "rbac": {"keda": False},
        "dashboards": {"enabled": True},
    },
    # What a production install adds around the defaults (two replicas, leader election, a PDB,
    # a spread over nodes): a third replica, a spread over zones too, placement, a pinned digest.
    "ha": {
        "replicas": 3,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "kubeforge"}},
            }
            for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}
                            ]
                        }
                    ]
                }
            }
        },
        "image": {"digest": "sha256:" + "a" * 64},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "resources": {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "resyncSeconds": 300,
        "modelProbe": False,
    },
}


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    yield Helm.ensure(home=Path(tmp_path_factory.mktemp("helm-home")))


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> dict[str, list[Manifest]]:
    """`helm template` of every value set, by name."""
    return {name: helm.template(values) for name, values in VALUE_SETS.items()}
