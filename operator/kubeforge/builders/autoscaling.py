"""Autoscaling children of a ModelDeployment: an HPA on its /scale, or a KEDA ScaledObject; a ServiceMonitor.

Targets are named in the user's terms (queue time, inference rate, GPU utilisation, and for streaming
models the streams in flight and the time to first token); this module owns the PromQL that turns
Triton's, DCGM's and the streaming model's counters into those figures, once, for the three
consumers: the HPA's Pods metrics (served by prometheus-adapter with the rules below), KEDA's
Prometheus triggers, and the tests that evaluate the formulas on a real Triton's counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeforge import API_VERSION
from kubeforge.api.modeldeployment import Autoscaling, AutoscalingEngine, ModelDeployment
from kubeforge.builders.meta import Object
from kubeforge.builders.modeldeployment import KIND, child_meta, labels
from kubeforge.builders.quantity import canonical_quantity
from kubeforge.settings import Settings

RATE_WINDOW = "1m"


@dataclass(frozen=True)
class TritonMetric:
    """A per-pod figure derived from Triton/DCGM series, with its PromQL."""

    name: str  # the custom-metrics API name the HPA asks for
    # the series prometheus-adapter discovers it from: any of them (a target in the user's terms may
    # be reported under different names by different backends, e.g. Python-backend LLMs and vLLM)
    series: tuple[str, ...]
    # PromQL with {sel} for label matchers and {by} for the grouping labels
    template: str
    additive: bool  # whether summing over pods gives a total (KEDA AverageValue) or not (KEDA Value)

    def promql(self, selector: str, by: str) -> str:
        return self.template.format(sel=selector, by=by, w=RATE_WINDOW)

    def series_query(self) -> str:
        """prometheus-adapter's seriesQuery: every pod-level series of any of the names."""
        if len(self.series) == 1:
            return f'{self.series[0]}{{namespace!="",pod!=""}}'
        return f'{{{any_of(self.series)},namespace!="",pod!=""}}'


def any_of(names: tuple[str, ...]) -> str:
    """A label matcher selecting series of any of these metric names."""
    return f'__name__=~"{"|".join(names)}"'


QUEUE_TIME = TritonMetric(
    name="triton_queue_time_per_request_microseconds",
    series=("nv_inference_queue_duration_us",),
    # average queue time of the requests in the window; clamp_min keeps an idle server at 0, not NaN
    template="sum by ({by}) (rate(nv_inference_queue_duration_us{{{sel}}}[{w}])) / "
    "clamp_min(sum by ({by}) (rate(nv_inference_request_success{{{sel}}}[{w}])), 0.001)",
    additive=False,
)
INFERENCE_RATE = TritonMetric(
    name="triton_inferences_per_second",
    series=("nv_inference_request_success",),
    template="sum by ({by}) (rate(nv_inference_request_success{{{sel}}}[{w}]))",
    additive=True,
)
GPU_UTILIZATION = TritonMetric(
    name="triton_gpu_utilization_percent",
    series=("DCGM_FI_DEV_GPU_UTIL",),
    template="avg by ({by}) (DCGM_FI_DEV_GPU_UTIL{{{sel}}})",
    additive=False,
)
# Streaming models: a Python-backend LLM's own metrics (kubeforge.trainer.triton_llm_model reports
# them) and vLLM's, which Triton's vLLM backend reports on the same port with REPORT_CUSTOM_METRICS
# (https://github.com/triton-inference-server/vllm_backend/blob/main/src/utils/metrics.py: counters
# and histograms labelled model and version; no gauge of running or waiting requests). One target
# reads whichever a model has; a model is one or the other, so their label sets never collide.
ACTIVE_STREAMS = TritonMetric(
    name="kubeforge_active_streams",
    series=("kubeforge_active_streams", "vllm:e2e_request_latency_seconds_sum"),
    # vLLM: requests in flight by Little's law, seconds of request per second (of the requests that
    # finished in the window)
    template="sum by ({by}) (kubeforge_active_streams{{{sel}}} "
    "or rate(vllm:e2e_request_latency_seconds_sum{{{sel}}}[{w}]))",
    additive=True,
)
TTFT_SUM = ("kubeforge_time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_sum")
TTFT_COUNT = ("kubeforge_time_to_first_token_seconds_count", "vllm:time_to_first_token_seconds_count")
TIME_TO_FIRST_TOKEN = TritonMetric(
    name="kubeforge_time_to_first_token_milliseconds",
    series=TTFT_COUNT,
    # the mean of the histogram's observations in the window; an idle server reads 0, not NaN
    template=f"sum by ({{by}}) (rate({{{{{any_of(TTFT_SUM)},{{sel}}}}}}[{{w}}])) / "
    f"clamp_min(sum by ({{by}}) (rate({{{{{any_of(TTFT_COUNT)},{{sel}}}}}}[{{w}}])), 0.001) * 1000",
    additive=False,
)
# Queue depth: requests Triton holds until a model instance starts on them. A vLLM model takes every
# request at once (its decoupled backend hands it to vLLM's scheduler), so for it this stays near 0:
# scale vLLM on activeStreams or timeToFirstTokenMilliseconds.
PENDING_REQUESTS = TritonMetric(
    name="triton_pending_requests",
    series=("nv_inference_pending_request_count",),
    template="sum by ({by}) (nv_inference_pending_request_count{{{sel}}})",
    additive=True,
)
METRICS = (QUEUE_TIME, INFERENCE_RATE, GPU_UTILIZATION, ACTIVE_STREAMS, TIME_TO_FIRST_TOKEN, PENDING_REQUESTS)


def targets(autoscaling: Autoscaling) -> list[tuple[TritonMetric | None, int]]:
    """(metric, per-replica target) pairs; metric None is CPU utilisation (a Resource metric)."""
    t = autoscaling.targets
    out: list[tuple[TritonMetric | None, int]] = []
    if t.queue_time_microseconds is not None:
        out.append((QUEUE_TIME, t.queue_time_microseconds))
    if t.inferences_per_second is not None:
        out.append((INFERENCE_RATE, t.inferences_per_second))
    if t.gpu_utilization is not None:
        out.append((GPU_UTILIZATION, t.gpu_utilization))
    if t.cpu_utilization is not None:
        out.append((None, t.cpu_utilization))
    if t.active_streams is not None:
        out.append((ACTIVE_STREAMS, t.active_streams))
    if t.time_to_first_token_milliseconds is not None:
        out.append((TIME_TO_FIRST_TOKEN, t.time_to_first_token_milliseconds))
    if t.pending_requests is not None:
        out.append((PENDING_REQUESTS, t.pending_requests))
    return out


def _scale_target(md: ModelDeployment) -> dict[str, str]:
    # the ModelDeployment's /scale, never the Deployment: the operator and the autoscaler never fight
    return {"apiVersion": API_VERSION, "kind": KIND, "name": md.metadata.name}


def _behavior(autoscaling: Autoscaling) -> dict[str, Any]:
    b = autoscaling.behavior
    up = b.scale_up_stabilization_seconds if b else 0
    down = b.scale_down_stabilization_seconds if b else 300
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": up,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 4, "periodSeconds": 15},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": down,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        },
    }


def uses_keda(autoscaling: Autoscaling | None) -> bool:
    return autoscaling is not None and (
        autoscaling.engine == AutoscalingEngine.KEDA or autoscaling.min_replicas == 0
    )


def build_hpa(md: ModelDeployment) -> Object | None:
    """An autoscaling/v2 HPA on the ModelDeployment's /scale, with Triton targets as Pods metrics."""
    autoscaling = md.spec.autoscaling
    if autoscaling is None or uses_keda(autoscaling):
        return None
    metrics: list[dict[str, Any]] = []
    for metric, target in targets(autoscaling):
        if metric is None:
            metrics.append(
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": target},
                    },
                }
            )
        else:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric.name},
                        "target": {"type": "AverageValue", "averageValue": canonical_quantity(target)},
                    },
                }
            )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_meta(md),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": metrics,
            "behavior": _behavior(autoscaling),
        },
    }


def deployment_selector(md: ModelDeployment) -> str:
    """PromQL label matchers for all of a ModelDeployment's server pods (Prometheus' pod label)."""
    return f'namespace="{md.metadata.namespace}",pod=~"{md.metadata.name}-[a-z0-9]+-[a-z0-9]+"'


def keda_query(md: ModelDeployment, metric: TritonMetric) -> str:
    """One figure for the whole ModelDeployment: a total for additive metrics, an average otherwise."""
    return metric.promql(deployment_selector(md), by="namespace")


# Activation alone must never ask for more than one replica: the Triton targets size the rest.
ACTIVATION_ONLY_THRESHOLD = 1_000_000


def activation_query(md: ModelDeployment) -> str | None:
    """PromQL for the demand that wakes the ModelDeployment from zero, if it has an activation."""
    autoscaling = md.spec.autoscaling
    activation = autoscaling.activation if autoscaling else None
    if activation is None:
        return None
    if activation.query is not None:
        return activation.query
    ns, name = md.metadata.namespace, md.metadata.name
    return f'sum(rate(nginx_ingress_controller_requests{{exported_namespace="{ns}",exported_service="{name}"}}[1m]))'


def build_scaled_object(md: ModelDeployment, settings: Settings) -> Object | None:
    """A KEDA ScaledObject on the ModelDeployment's /scale; it can scale to zero."""
    autoscaling = md.spec.autoscaling
    if autoscaling is None or not uses_keda(autoscaling):
        return None
    triggers: list[dict[str, Any]] = []
    for metric, target in targets(autoscaling):
        if metric is None:
            triggers.append({"type": "cpu", "metricType": "Utilization", "metadata": {"value": str(target)}})
            continue
        triggers.append(
            {
                "type": "prometheus",
                # AverageValue: desired = total / target; Value: desired = current * (value / target)
                "metricType": "AverageValue" if metric.additive else "Value",
                "metadata": {
                    "serverAddress": settings.prometheus_address,
                    "query": keda_query(md, metric),
                    "threshold": str(target),
                    "activationThreshold": "0",
                },
            }
        )
    demand = activation_query(md)
    if demand is not None:
        triggers.append(
            {
                "type": "prometheus",
                "name": "activation",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": settings.prometheus_address,
                    "query": demand,
                    "threshold": str(autoscaling.targets.inferences_per_second or ACTIVATION_ONLY_THRESHOLD),
                    "activationThreshold": "0",
                },
            }
        )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": child_meta(md),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "pollingInterval": 15,
            # how long a quiet ModelDeployment keeps its last replica: the scale-down look-back window
            "cooldownPeriod": _behavior(autoscaling)["scaleDown"]["stabilizationWindowSeconds"],
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(autoscaling)}},
            "triggers": triggers,
        },
    }


def build_service_monitor(md: ModelDeployment) -> Object | None:
    """A Prometheus-operator ServiceMonitor for Triton's metrics port."""
    if md.spec.monitoring is not None and not md.spec.monitoring.service_monitor:
        return None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": child_meta(md),
        "spec": {
            "selector": {"matchLabels": labels(md)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def prometheus_adapter_rules() -> dict[str, Any]:
    """prometheus-adapter `rules.custom` that serve the Triton metrics as per-pod custom metrics."""
    rules = []
    for metric in METRICS:
        rules.append(
            {
                "seriesQuery": metric.series_query(),
                "resources": {
                    "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
                },
                "name": {"matches": f"^({'|'.join(metric.series)})$", "as": metric.name},
                "metricsQuery": metric.promql("<<.LabelMatchers>>", by="<<.GroupBy>>"),
            }
        )
    return {"rules": {"default": False, "custom": rules}}
