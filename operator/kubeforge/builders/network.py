"""The NetworkPolicy of each ModelDeployment and TrainingJob: its pods admit only what they serve.

ModelDeployment (the Triton pods, and a LeaderWorkerSet's leaders and workers):
- Triton's HTTP and gRPC ports (8000, 8001), and the OpenAI front's (9000), from `spec.network.allowFrom`, else the operator's
  default (`Settings.inference_from`; empty: from anyone), and from the operator's namespace
  (its probe reads every server);
- the metrics port (8002) from `Settings.metrics_from` (the monitoring namespace) and the operator;
- every port from the ModelDeployment's own pods: Ray's head (6379) and its worker ports, NCCL
  (the leader stops Ray's client server: builders/leaderworkerset.py).
TrainingJob (every attempt's workers): every port from the gang's own pods only (the c10d
rendezvous on 29500, NCCL and gloo), nothing else.

Only ingress is fenced: the pods still fetch models and reach the API server. A NetworkPolicy peer
cannot name "the destination's own group", so the pods of a ModelDeployment's groups may reach one
another; another object's pods, in this namespace or any other, may not.
"""

from __future__ import annotations

from typing import Any

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.api.trainingjob import TrainingJob
from kubeforge.builders import modeldeployment as mdb
from kubeforge.builders import trainingjob as tjb
from kubeforge.builders.meta import Object, selector_labels
from kubeforge.settings import NAMESPACE_NAME_LABEL, Settings


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _operator(settings: Settings) -> list[dict[str, Any]]:
    if not settings.operator_namespace:
        return []  # run outside the cluster (development): nothing in it to admit
    return [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.operator_namespace}}}]


def _policy(meta: dict[str, Any], pods: dict[str, str], ingress: list[dict[str, Any]]) -> Object:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta,
        "spec": {"podSelector": {"matchLabels": pods}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def build_model_deployment_network_policy(md: ModelDeployment, settings: Settings) -> Object | None:
    """None when the operator's NetworkPolicies are off."""
    if not settings.network_policies:
        return None
    own = mdb.selector(md)
    network = md.spec.network
    if network is not None and network.allow_from is not None:
        allowed: list[dict[str, Any]] | None = [peer.wire() for peer in network.allow_from]
    else:
        allowed = [dict(p) for p in settings.inference_from] or None
    operator = _operator(settings)
    inference: dict[str, Any] = {
        "ports": _tcp(mdb.HTTP_PORT, mdb.GRPC_PORT, *([mdb.OPENAI_PORT] if mdb.openai_models(md) else []))
    }
    if allowed is not None:  # else from anyone
        inference["from"] = [*allowed, *operator]
    metrics = {
        "ports": _tcp(mdb.METRICS_PORT),
        "from": [*(dict(p) for p in settings.metrics_from), *operator],
    }
    group = {"from": [{"podSelector": {"matchLabels": own}}]}
    return _policy(mdb.child_meta(md), own, [inference, metrics, group])


def build_training_job_network_policy(tj: TrainingJob, settings: Settings) -> Object | None:
    """None when the operator's NetworkPolicies are off."""
    if not settings.network_policies:
        return None
    gang = selector_labels(tjb.KIND, tj.metadata.name)
    # named as its headless Service (`<name>-workers`): a ModelDeployment of the same name has `<name>`
    meta = tjb._meta(tj, tjb.service_name(tj))
    return _policy(meta, gang, [{"from": [{"podSelector": {"matchLabels": gang}}]}])
