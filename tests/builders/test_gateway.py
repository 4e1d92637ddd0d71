"""The HTTPRoute and revision Services of a canary split by a Gateway (builders/gateway.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubeforge.api.modeldeployment import ModelDeployment, RolloutPhase, RolloutStatus
from kubeforge.builders.gateway import build_http_route
from kubeforge.builders.modeldeployment import (
    build_canary_deployment,
    build_revision_services,
    build_triton_deployment,
)
from kubeforge.settings import Settings
from kubeforge.status.gateway import route_summary

REVISION = "kubeforge.io/revision"


MODEL = {"name": "m", "source": "pvc://models/m", "format": "onnx"}
LANGUAGE_MODEL = {"name": "m", "source": "pvc://models/m", "format": "python", "config": {"decoupled": True}}


def _md(gateway: dict[str, Any] | None, model: dict[str, Any] = MODEL, **spec: Any) -> ModelDeployment:
    canary: dict[str, Any] = {"steps": [{"weight": 10}]}
    if gateway is not None:
        canary["gateway"] = gateway
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "shop", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"replicas": 4, "models": [model], "rollout": {"canary": canary}, **spec},
        }
    )


def _running(routed: int | None) -> RolloutStatus:
    return RolloutStatus(
        phase=RolloutPhase.PROGRESSING,
        summary="step 1/1 10%",
        message="",
        step=1,
        weight=10,
        routed_weight=routed,
    )


def _backends(route: dict[str, Any] | None) -> list[tuple[str, int]]:
    assert route is not None
    return [(b["name"], b["weight"]) for b in route["spec"]["rules"][0]["backendRefs"]]


def test_without_a_gateway_there_is_no_route_no_revision_service_and_no_stable_label() -> None:
    md = _md(None)
    assert build_http_route(md, _running(10)) is None
    assert build_revision_services(md) == []
    assert REVISION not in build_triton_deployment(md, Settings())["spec"]["template"]["metadata"]["labels"]


def test_the_route_sends_everything_to_the_one_service_unless_a_canary_is_routed() -> None:
    md = _md({"name": "edge"})
    assert _backends(build_http_route(md, None)) == [("shop", 1)]
    assert _backends(build_http_route(md, _running(None))) == [("shop", 1)]
    complete = RolloutStatus(phase=RolloutPhase.COMPLETE, summary="stable", message="", routed_weight=10)
    assert _backends(build_http_route(md, complete)) == [("shop", 1)]
    assert _backends(build_http_route(md, _running(0))) == [("shop-stable", 100), ("shop-canary", 0)]
    assert _backends(build_http_route(md, _running(10))) == [("shop-stable", 90), ("shop-canary", 10)]
    # an ended canary drains: nothing for it, until it is gone
    draining = RolloutStatus(
        phase=RolloutPhase.ROLLED_BACK,
        summary="rolled back",
        message="",
        routed_weight=0,
        canary_drain_until=datetime(2026, 12, 4, tzinfo=UTC),
    )
    assert _backends(build_http_route(md, draining)) == [("shop-stable", 100), ("shop-canary", 0)]


def test_the_route_names_its_gateway_listener_and_hostnames() -> None:
    route = build_http_route(
        _md({"name": "edge", "namespace": "gateways", "sectionName": "web", "hostnames": ["shop.example"]}),
        None,
    )
    assert route is not None
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["metadata"]["name"] == "shop"
    assert route["metadata"]["ownerReferences"][0]["uid"] == "u1"
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "edge",
            "namespace": "gateways",
            "sectionName": "web",
        }
    ]
    assert route["spec"]["hostnames"] == ["shop.example"]
    assert "hostnames" not in (build_http_route(_md({"name": "edge"}), None) or {})["spec"]


def test_each_revision_service_selects_only_its_own_pods() -> None:
    md = _md({"name": "edge"})
    stable, canary = build_revision_services(md)
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == ("shop-stable", "shop-canary")
    assert (
        stable["spec"]["selector"][REVISION] == "stable" and canary["spec"]["selector"][REVISION] == "canary"
    )
    pods = build_triton_deployment(md, Settings())["spec"]["template"]["metadata"]["labels"]
    canary_pods = build_canary_deployment(md, Settings(), 1, "r2")["spec"]["template"]["metadata"]["labels"]
    for service, labels in ((stable, pods), (canary, canary_pods)):
        assert service["spec"]["selector"].items() <= labels.items()
    assert not stable["spec"]["selector"].items() <= canary_pods.items()
    assert not canary["spec"]["selector"].items() <= pods.items()


def test_the_route_summary_says_what_its_gateway_reported() -> None:
    route = build_http_route(_md({"name": "edge"}), _running(10))
    assert route is not None
    waiting = route_summary(route, None)
    assert (
        waiting == "HTTPRoute shop (shop-stable 90, shop-canary 10): Gateway ns/edge has not reported on it"
    )

    def reported(*conditions: dict[str, str]) -> dict[str, Any]:
        return {
            **route,
            "status": {"parents": [{"parentRef": {"name": "edge"}, "conditions": list(conditions)}]},
        }

    accepted = {"type": "Accepted", "status": "True"}
    assert route_summary(route, reported(accepted, {"type": "ResolvedRefs", "status": "True"})).endswith(
        "accepted by Gateway ns/edge"
    )
    refused = {
        "type": "ResolvedRefs",
        "status": "False",
        "reason": "BackendNotFound",
        "message": "no shop-canary",
    }
    assert route_summary(route, reported(accepted, refused)) == (
        "HTTPRoute shop (shop-stable 90, shop-canary 10) not accepted by Gateway ns/edge: "
        "ResolvedRefs BackendNotFound: no shop-canary"
    )


def _rules(route: dict[str, Any] | None) -> list[tuple[str, list[tuple[str, int, int]]]]:
    assert route is not None
    return [
        (
            rule["matches"][0]["path"]["value"],
            [(b["name"], b["port"], b["weight"]) for b in rule["backendRefs"]],
        )
        for rule in route["spec"]["rules"]
    ]


def test_a_language_model_gets_the_openai_api_on_v1_with_the_same_weights() -> None:
    lm = _md({"name": "edge"}, LANGUAGE_MODEL)
    assert _rules(build_http_route(lm, _running(10))) == [
        ("/v1", [("shop-stable", 9000, 90), ("shop-canary", 9000, 10)]),
        ("/", [("shop-stable", 8000, 90), ("shop-canary", 8000, 10)]),
    ]
    assert _rules(build_http_route(lm, None)) == [("/v1", [("shop", 9000, 1)]), ("/", [("shop", 8000, 1)])]
    # the front turned off: no /v1 rule (Triton has no such path); a model that is not a language model: none
    off = _md({"name": "edge"}, LANGUAGE_MODEL, openai={"enabled": False})
    assert _rules(build_http_route(off, None)) == [("/", [("shop", 8000, 1)])]
    assert _rules(build_http_route(_md({"name": "edge"}), None)) == [("/", [("shop", 8000, 1)])]
