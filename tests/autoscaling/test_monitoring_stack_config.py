"""What the e2e monitoring stack hands to the real components, checked without a cluster.

The adapter must serve exactly the rules of the generated chart values, and the aggregation
layer's objects must have the shape the API server accepts and routes (e2e/aggregation.py).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from e2e.aggregation import AggregatedAPI
from e2e.monitoring import ADAPTER_RULES, CUSTOM_METRICS, adapter_config


def test_the_generated_rules_reach_the_adapter_unchanged() -> None:
    values = yaml.safe_load(ADAPTER_RULES.read_text())
    config = adapter_config(values)
    assert config == {"rules": values["rules"]["custom"]}
    assert {rule["name"]["as"] for rule in config["rules"]} >= {
        "triton_queue_time_per_request_microseconds",
        "triton_inferences_per_second",
    }


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ({"custom": [{"seriesQuery": "a"}]}, {"rules": [{"seriesQuery": "a"}]}),
        ({"external": [{"seriesQuery": "b"}]}, {"externalRules": [{"seriesQuery": "b"}]}),
        ({"resource": {"cpu": {}}, "custom": []}, {"resourceRules": {"cpu": {}}}),
        ({}, {}),
    ],
)
def test_chart_values_map_to_the_adapter_config_as_the_chart_renders_them(
    rules: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert adapter_config({"rules": rules}) == expected


@pytest.mark.parametrize("rules", [{"default": True}, {"existing": "my-configmap"}])
def test_what_only_the_chart_can_render_is_refused(rules: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"rules\.default"):
        adapter_config({"rules": rules})


def test_an_aggregated_api_routes_to_loopback_through_a_selectorless_service() -> None:
    service, endpoint_slice, *apiservices = CUSTOM_METRICS.manifests(port=40123, ca_bundle=b"PEM")
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": 40123}]
    assert endpoint_slice["metadata"]["labels"]["kubernetes.io/service-name"] == "prometheus-adapter"
    # FQDN: an IPv4 slice may not hold a loopback address
    assert endpoint_slice["addressType"] == "FQDN"
    assert endpoint_slice["endpoints"][0]["addresses"] == ["127.0.0.1"]
    assert endpoint_slice["ports"] == [{"name": "https", "port": 40123, "protocol": "TCP"}]
    assert [a["metadata"]["name"] for a in apiservices] == [
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.custom.metrics.k8s.io",
    ]
    # the first version is preferred; the certificate is verified, never skipped
    assert apiservices[0]["spec"]["versionPriority"] > apiservices[1]["spec"]["versionPriority"]
    assert all(base64.b64decode(a["spec"]["caBundle"]) == b"PEM" for a in apiservices)
    assert all("insecureSkipTLSVerify" not in a["spec"] for a in apiservices)


def test_the_certificate_name_is_the_service_dns_name() -> None:
    api = AggregatedAPI("keda", "keda-metrics-apiserver", "external.metrics.k8s.io", ("v1beta1",))
    assert api.dns_name == "keda-metrics-apiserver.keda.svc"
    assert api.apiservices == ["v1beta1.external.metrics.k8s.io"]
