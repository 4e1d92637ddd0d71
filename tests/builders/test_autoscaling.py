"""HPA / ScaledObject / ServiceMonitor builders and the PromQL they carry."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.builders.autoscaling import (
    INFERENCE_RATE,
    QUEUE_TIME,
    build_hpa,
    build_scaled_object,
    build_service_monitor,
    keda_query,
    prometheus_adapter_rules,
)
from kubeforge.settings import Settings
from tests.autoscaling.promql import Scrapes, evaluate, parse_exposition
from tests.harness import import_part


def _md(body: dict[str, Any], **autoscaling: Any) -> ModelDeployment:
    body = json.loads(json.dumps(body))
    if autoscaling.pop("off", False):
        body["spec"].pop("autoscaling")
    else:
        body["spec"]["autoscaling"].update(autoscaling)
    return ModelDeployment.model_validate(body)


def test_hpa_targets_the_model_deployment_scale(md: ModelDeployment) -> None:
    hpa = build_hpa(md)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "resnet50",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "triton_queue_time_per_request_microseconds"},
                "target": {"type": "AverageValue", "averageValue": "50k"},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "triton_inferences_per_second"},
                "target": {"type": "AverageValue", "averageValue": "200"},
            },
        },
    ]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_cpu_target_is_a_resource_metric(md_body: dict[str, Any]) -> None:
    hpa = build_hpa(_md(md_body, targets={"cpuUtilization": 70}))
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
        }
    ]


def test_behavior_windows_from_spec(md_body: dict[str, Any]) -> None:
    hpa = build_hpa(
        _md(md_body, behavior={"scaleUpStabilizationSeconds": 30, "scaleDownStabilizationSeconds": 600})
    )
    assert hpa is not None
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 30
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600


def test_no_autoscaler_when_off(md_body: dict[str, Any]) -> None:
    md = _md(md_body, off=True)
    assert build_hpa(md) is None
    assert build_scaled_object(md, Settings()) is None


ZERO = {"engine": "keda", "minReplicas": 0, "activation": {"source": "ingress-nginx"}}


@pytest.mark.parametrize("autoscaling", [{"engine": "keda"}, ZERO])
def test_keda_scaled_object(md_body: dict[str, Any], autoscaling: dict[str, Any]) -> None:
    md = _md(md_body, **autoscaling)
    assert build_hpa(md) is None
    so = build_scaled_object(md, Settings(prometheus_address="http://prom:9090"))
    assert so is not None
    assert so["spec"]["scaleTargetRef"]["kind"] == "ModelDeployment"
    assert so["spec"]["minReplicaCount"] == autoscaling.get("minReplicas", 1)
    queue, rate, *activation = so["spec"]["triggers"]
    assert len(activation) == (1 if "activation" in autoscaling else 0)
    assert queue["type"] == rate["type"] == "prometheus"
    assert queue["metricType"] == "Value" and rate["metricType"] == "AverageValue"
    assert queue["metadata"]["serverAddress"] == "http://prom:9090"
    assert queue["metadata"]["threshold"] == "50000"


def test_generated_promql_is_exact(md: ModelDeployment) -> None:
    sel = 'namespace="team-a",pod=~"resnet50-[a-z0-9]+-[a-z0-9]+"'
    assert keda_query(md, QUEUE_TIME) == (
        f"sum by (namespace) (rate(nv_inference_queue_duration_us{{{sel}}}[1m])) / "
        f"clamp_min(sum by (namespace) (rate(nv_inference_request_success{{{sel}}}[1m])), 0.001)"
    )
    assert (
        keda_query(md, INFERENCE_RATE)
        == f"sum by (namespace) (rate(nv_inference_request_success{{{sel}}}[1m]))"
    )


def test_generated_promql_parses(md: ModelDeployment) -> None:
    promql_parser = import_part("promql_parser")
    so = build_scaled_object(
        _md(
            md.model_dump(by_alias=True, mode="json"),
            engine="keda",
            targets={
                "queueTimeMicroseconds": 1,
                "inferencesPerSecond": 1,
                "gpuUtilization": 50,
                "activeStreams": 8,
                "timeToFirstTokenMilliseconds": 200,
                "pendingRequests": 4,
            },
        ),
        Settings(),
    )
    assert so is not None
    for trigger in so["spec"]["triggers"]:
        promql_parser.parse(trigger["metadata"]["query"])
    for rule in prometheus_adapter_rules()["rules"]["custom"]:
        query = (
            rule["metricsQuery"]
            .replace("<<.LabelMatchers>>", 'namespace="a",pod="b"')
            .replace("<<.GroupBy>>", "pod")
        )
        promql_parser.parse(query)


def test_streaming_targets_read_the_models_own_metrics(md_body: dict[str, Any]) -> None:
    streaming = {"activeStreams": 8, "timeToFirstTokenMilliseconds": 200}
    hpa = build_hpa(_md(md_body, targets=streaming))
    assert hpa is not None
    assert [
        (m["pods"]["metric"]["name"], m["pods"]["target"]["averageValue"]) for m in hpa["spec"]["metrics"]
    ] == [
        ("kubeforge_active_streams", "8"),
        ("kubeforge_time_to_first_token_milliseconds", "200"),
    ]
    so = build_scaled_object(_md(md_body, engine="keda", targets=streaming), Settings())
    assert so is not None
    streams, ttft = so["spec"]["triggers"]
    # streams add up over pods (desired = total / 8); a mean time to first token does not
    assert (streams["metricType"], ttft["metricType"]) == ("AverageValue", "Value")
    sel = 'namespace="team-a",pod=~"resnet50-[a-z0-9]+-[a-z0-9]+"'
    # a Python-backend LLM's own gauge, or vLLM's requests in flight (Little's law)
    assert streams["metadata"]["query"] == (
        f"sum by (namespace) (kubeforge_active_streams{{{sel}}} "
        f"or rate(vllm:e2e_request_latency_seconds_sum{{{sel}}}[1m]))"
    )
    sums = "kubeforge_time_to_first_token_seconds_sum|vllm:time_to_first_token_seconds_sum"
    counts = "kubeforge_time_to_first_token_seconds_count|vllm:time_to_first_token_seconds_count"
    assert ttft["metadata"]["query"] == (
        f'sum by (namespace) (rate({{__name__=~"{sums}",{sel}}}[1m])) / '
        f'clamp_min(sum by (namespace) (rate({{__name__=~"{counts}",{sel}}}[1m])), 0.001) * 1000'
    )
    rules = prometheus_adapter_rules()["rules"]["custom"]
    assert [r["name"]["as"] for r in rules][-3:] == [
        "kubeforge_active_streams",
        "kubeforge_time_to_first_token_milliseconds",
        "triton_pending_requests",
    ]
    # the adapter discovers the metric from whichever backend's series a pod has
    assert rules[-2]["seriesQuery"] == f'{{__name__=~"{counts}",namespace!="",pod!=""}}'
    assert rules[-2]["name"]["matches"] == f"^({counts})$"


def test_pending_requests_is_tritons_queue_depth(md_body: dict[str, Any]) -> None:
    so = build_scaled_object(_md(md_body, engine="keda", targets={"pendingRequests": 4}), Settings())
    assert so is not None
    (pending,) = so["spec"]["triggers"]
    sel = 'namespace="team-a",pod=~"resnet50-[a-z0-9]+-[a-z0-9]+"'
    assert pending["metricType"] == "AverageValue"  # queue depth adds up over pods: desired = total / 4
    assert pending["metadata"]["query"] == f"sum by (namespace) (nv_inference_pending_request_count{{{sel}}})"
    hpa = build_hpa(_md(md_body, targets={"pendingRequests": 4}))
    assert hpa is not None
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_pending_requests"


def test_service_monitor(md: ModelDeployment) -> None:
    sm = build_service_monitor(md)
    assert sm is not None
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["selector"]["matchLabels"]["kubeforge.io/owner-name"] == "resnet50"


def test_scale_to_zero_wakes_on_demand_in_front_of_the_pods(md_body: dict[str, Any]) -> None:
    """At zero replicas no Triton reports anything: the activation trigger reads the ingress."""
    so = build_scaled_object(_md(md_body, **ZERO), Settings(prometheus_address="http://prom:9090"))
    assert so is not None
    trigger = so["spec"]["triggers"][-1]
    assert trigger["name"] == "activation"
    assert trigger["metadata"]["query"] == (
        'sum(rate(nginx_ingress_controller_requests{exported_namespace="team-a",'
        'exported_service="resnet50"}[1m]))'
    )
    assert trigger["metadata"]["activationThreshold"] == "0"
    assert trigger["metadata"]["threshold"] == "200"  # requests/s per replica, as inferencesPerSecond
    assert so["spec"]["cooldownPeriod"] == 300  # idle this long before the last replica goes
    quick = {**ZERO, "behavior": {"scaleDownStabilizationSeconds": 10}}
    so = build_scaled_object(_md(md_body, **quick), Settings())
    assert so is not None and so["spec"]["cooldownPeriod"] == 10
    custom = {**ZERO, "activation": {"query": 'sum(rate(envoy_requests{svc="resnet50"}[1m]))'}}
    so = build_scaled_object(_md(md_body, **custom), Settings())
    assert so is not None and so["spec"]["triggers"][-1]["metadata"]["query"] == custom["activation"]["query"]


def test_vllm_targets_evaluate_on_the_vllm_backends_series(md_body: dict[str, Any]) -> None:
    """The series Triton's vLLM backend reports (counters and histograms labelled model and version,
    docs/vllm-notes.md) give the streaming targets their figures; the gauge of a python-llm model
    and the vLLM model's histogram add up on one pod without colliding."""
    so = build_scaled_object(
        _md(md_body, engine="keda", targets={"activeStreams": 4, "timeToFirstTokenMilliseconds": 300}),
        Settings(),
    )
    assert so is not None
    streams_q, ttft_q = (t["metadata"]["query"] for t in so["spec"]["triggers"])
    pod = {"namespace": "team-a", "pod": "resnet50-5bb75f8dc6-d9xrc"}

    def exposition(e2e_sum: float, ttft_sum: float, ttft_count: int, streams: int) -> str:
        vllm = 'model="qwen",version="1"'
        return "\n".join(
            [
                f"vllm:e2e_request_latency_seconds_sum{{{vllm}}} {e2e_sum}",
                f"vllm:time_to_first_token_seconds_sum{{{vllm}}} {ttft_sum}",
                f"vllm:time_to_first_token_seconds_count{{{vllm}}} {ttft_count}",
                f'kubeforge_active_streams{{model="opticks",version="1"}} {streams}',
            ]
        )

    before = parse_exposition(exposition(100.0, 5.0, 50, 0), pod)
    # 10 s later: 30 s of requests finished (3 in flight on average), 20 first tokens at 250 ms
    after = parse_exposition(exposition(130.0, 10.0, 70, 2), pod)
    window = Scrapes(before, after, 10.0)
    assert evaluate(streams_q, window) == {frozenset({("namespace", "team-a")}): pytest.approx(5.0)}
    assert evaluate(ttft_q, window) == {frozenset({("namespace", "team-a")}): pytest.approx(250.0)}
