"""The HTTPRoute of a canary split by a Gateway (spec.rollout.canary.gateway; Gateway API v1).

One route, `<name>`, attached to the named Gateway. While a canary runs it weights the two revision
Services (`<name>-stable`, `<name>-canary`: builders/modeldeployment.build_revision_services) with
the weight the rollout routes now (status.rollout.routedWeight: a step's weight once its pods are
ready), and while an ended canary drains it sends it nothing (weight 0). Otherwise it sends
everything to the Service `<name>`, which selects every serving pod: the route never waits on a
label the stable pods may not carry yet.

Its rules: `/v1` to the OpenAI front's port (9000) when the pods run one (a language model), and
everything else to Triton's HTTP port (8000). The Gateway API gives the longest matching prefix the
request, and Triton serves nothing under `/v1`; both rules carry the same weights.
"""

from __future__ import annotations

from kubeforge.api.modeldeployment import ModelDeployment, RolloutStatus, gateway_of
from kubeforge.builders.meta import Object
from kubeforge.builders.modeldeployment import (
    HTTP_PORT,
    OPENAI_PORT,
    canary_name,
    child_meta,
    openai_models,
    stable_name,
)

GATEWAY_API = "gateway.networking.k8s.io/v1"
OPENAI_PATH = "/v1"  # the OpenAI API's paths: /v1/models, /v1/completions, /v1/chat/completions


def routed_weight(rollout: RolloutStatus | None) -> int | None:
    """The canary's percent of the route's requests, or None: no canary runs or drains."""
    if rollout is None or not (rollout.running or rollout.canary_drain_until is not None):
        return None
    return rollout.routed_weight


def build_http_route(md: ModelDeployment, rollout: RolloutStatus | None) -> Object | None:
    """The HTTPRoute for the current spec and rollout, or None: no Gateway is named."""
    gateway = gateway_of(md)
    if gateway is None:
        return None
    parent: dict[str, str] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace is not None:
        parent["namespace"] = gateway.namespace
    if gateway.section_name is not None:
        parent["sectionName"] = gateway.section_name
    weight = routed_weight(rollout)
    if weight is None:
        services = [(md.metadata.name, 1)]
    else:
        services = [(stable_name(md), 100 - weight), (canary_name(md), weight)]
    ports = [(OPENAI_PATH, OPENAI_PORT)] if openai_models(md) else []
    ports.append(("/", HTTP_PORT))
    rules = [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": path}}],
            "backendRefs": [_backend(service, port, w) for service, w in services],
        }
        for path, port in ports
    ]
    spec: Object = {"parentRefs": [parent], "rules": rules}
    if gateway.hostnames:
        spec["hostnames"] = list(gateway.hostnames)
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": child_meta(md), "spec": spec}


def _backend(service: str, port: int, weight: int) -> Object:
    return {"group": "", "kind": "Service", "name": service, "port": port, "weight": weight}
