"""A canary split by a real Gateway (spec.rollout.canary.gateway): Traefik routing real HTTP by the
operator's HTTPRoute weights to real tritonservers at their pods' IPs.

Runs only in the network namespace of hack/netns.sh (`make test-e2e-netns`): there each simulated
pod's IP (kwok's, from its node's podCIDR) is on the loopback and the pod's tritonserver binds it on
the container's own ports (e2e/netns.py, e2e/podservers.py). Traefik (e2e/gateway.py) reads the
HTTPRoute, the Services and their EndpointSlices from the cluster and sends each request to a pod
IP; the real Prometheus scrapes the same servers for the operator's analysis.

One ModelDeployment of 4 replicas, one step of 10 % held until promoted:
1. created with the Gateway named: the stable pods carry kubeforge.io/revision=stable, the route
   sends everything to the Service `<name>`, and Traefik accepts it;
2. a new model: 1 canary pod of 4 (25 % of the replicas) but 10 % +- 3 of 2,000 requests through
   the Gateway; the operator restarted mid-step keeps the weights; promoted by verb;
3. a model that fails every second execution: rolled back within one analysis interval, the
   numbers in status, the route back on the one Service;
4. day 2: hostnames added and removed, then the Gateway no longer named: the route and the
   revision Services go, and the stable pods lose their label by a rolling update, not a canary.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from e2e import netns
from e2e.cluster import Cluster
from e2e.front import INFER_BODY
from e2e.gateway import Traefik, gateway_manifests, install_gateway_api
from e2e.kube import Kubectl, wait_for
from e2e.net import http_status
from e2e.operator_proc import OperatorProcess
from e2e.podservers import PodServers
from e2e.prometheus import Prometheus
from e2e.rollouts import (
    ACTION,
    MODEL,
    converged,
    deployment,
    fixed_model,
    manifest,
    md_body,
    ready,
    rollout_status,
    wait_rollout,
)
from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.testing.workloads import in_threads, streaming_text_model, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.netns]
NAME = "shop"
GATEWAY = "edge"
REVISION = "kubeforge.io/revision"
STEPS = [{"weight": 10}]  # held until promoted
ANALYSIS = {"intervalSeconds": 10, "minRequests": 10, "maxErrorRatioIncrease": 0.05, "maxLatencyRatio": 20}
REQUESTS = 2000
DRAIN = 15  # seconds an ended canary's pods keep running, unrouted (Traefik applies a route seconds later)


@pytest.fixture
def traefik(cluster: Cluster, kubectl: Kubectl) -> Iterator[Traefik]:
    why = netns.inside()
    if why is not None:  # never skipped: pods need real IPs, which only that namespace may have
        pytest.fail(f"this test runs in the network namespace of hack/netns.sh (make test-e2e-netns): {why}")
    install_gateway_api(kubectl)
    with Traefik(cluster, cluster.state_dir / "traefik") as server:
        yield server


def _md(namespace: str, model: ModelSpec, gateway: dict[str, Any] | None) -> str:
    canary: dict[str, Any] = {"steps": STEPS, "analysis": ANALYSIS}
    if gateway is not None:
        canary["gateway"] = gateway
    return manifest(namespace, NAME, {"replicas": 4, "models": [model.wire()], "rollout": {"canary": canary}})


def _route(kubectl: Kubectl, namespace: str) -> dict[str, Any] | None:
    found = kubectl("get", "httproute", NAME, "-o", "json", namespace=namespace, check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def _backends(kubectl: Kubectl, namespace: str) -> list[tuple[str, int]] | None:
    route = _route(kubectl, namespace)
    if route is None:
        return None
    return [(b["name"], b.get("weight", 1)) for b in route["spec"]["rules"][0]["backendRefs"]]


def _wait_backends(kubectl: Kubectl, namespace: str, want: list[tuple[str, int]] | None) -> None:
    wait_for(
        lambda: _backends(kubectl, namespace) == want, timeout=60, message=f"the HTTPRoute's backends {want}"
    )


def _send(
    url: str, count: int, clients: int, host: str | None = None, body: bytes = INFER_BODY
) -> Counter[int]:
    """`count` POSTs of `body` (an inference request) through the Gateway from `clients` threads:
    their HTTP statuses."""
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}

    def one() -> int:
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    return in_threads(count, clients, one)


@contextmanager
def _under_load(url: str, clients: int, body: bytes = INFER_BODY) -> Iterator[None]:
    """Requests through the Gateway from `clients` threads, one after another, until the block ends."""
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            _send(url, 10 * clients, clients, body=body)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        yield
    finally:
        stop.set()
        loader.join(timeout=60)


def _successes(servers: PodServers, model: str = MODEL) -> dict[str, float]:
    """pod -> the requests of `model` its tritonserver executed successfully (Triton's own counter)."""
    successes = re.compile(
        rf'^nv_inference_request_success\{{model="{model}",version="1"\}} (\S+)$', re.MULTILINE
    )
    counts = {}
    for pod, url in servers.metrics_urls().items():
        with urllib.request.urlopen(url, timeout=10) as response:
            found = successes.search(response.read().decode())
        counts[pod] = float(found.group(1)) if found else 0.0
    return counts


def _canary_share(servers: PodServers, before: dict[str, float], model: str = MODEL) -> float:
    after = _successes(servers, model)
    served = {pod: after[pod] - before.get(pod, 0.0) for pod in after}
    canary = sum(n for pod, n in served.items() if servers.pod_labels[pod].get(REVISION) == "canary")
    print(f"\n{model}: the canary served {canary:.0f} of {sum(served.values()):.0f} requests: {served}")
    return canary / sum(served.values())


def _pod_labels(kubectl: Kubectl, namespace: str) -> list[dict[str, str]]:
    selector = f"kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name={NAME}"
    pods = kubectl.json("get", "pods", "-l", selector, namespace=namespace)["items"]
    return [p["metadata"].get("labels") or {} for p in pods if not p["metadata"].get("deletionTimestamp")]


@dataclass(frozen=True)
class Stage:
    env: dict[str, str]  # the operator's, for its restarts
    models: Path  # the `models` claim's folder
    servers: PodServers  # a server per pod, on its IP (entered by the test)


@pytest.fixture
def stage(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    analysis_prometheus: Prometheus,
    traefik: Traefik,
    tmp_path: Path,
) -> Stage:
    """The operator reading the analysis Prometheus, the Gateway on Traefik's port, and the pods'
    servers (not yet started), which that Prometheus scrapes."""
    env = {"KUBEFORGE_PROMETHEUS_ADDRESS": analysis_prometheus.url}
    own_operator.start(env=env)
    kubectl.apply(gateway_manifests(namespace, GATEWAY, traefik.port))
    pvc = tmp_path / "pvc"
    servers = PodServers(
        kubectl, namespace, NAME, pvc, tmp_path / "servers", analysis_prometheus.set_targets, pod_ips=True
    )
    return Stage(env, pvc / models_claim, servers)


def test_a_gateway_splits_the_canary_by_its_weight_and_a_broken_one_is_rolled_back(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, traefik: Traefik, stage: Stage
) -> None:
    good, better, broken = fixed_model(2.0), fixed_model(3.0), fixed_model(2.0, error_every=2)
    for model in (good, better, broken):
        write_model(stage.models, model)  # one folder: the sources differ only in config
    url = f"{traefik.url}/v2/models/{MODEL}/infer"
    gateway = {"name": GATEWAY, "drainSeconds": DRAIN}

    kubectl.apply(_md(namespace, good, gateway))
    servers, env = stage.servers, stage.env
    with servers:
        # 1. the route on the one Service, accepted by Traefik; the stable pods labelled for theirs
        servers.wait_for_servers(4)
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        stable = wait_rollout(kubectl, namespace, NAME, "created", phase="Complete")
        wait_for(
            lambda: "accepted by Gateway" in rollout_status(kubectl, namespace, NAME).get("route", ""),
            timeout=60,
            message="status.rollout.route: accepted by the Gateway",
        )
        assert all(labels.get(REVISION) == "stable" for labels in _pod_labels(kubectl, namespace))
        assert _send(url, 20, 2) == Counter({200: 20})
        converged(kubectl, namespace, NAME)

        # 2. a new model: one canary pod of four, a tenth of the Gateway's requests
        kubectl.apply(_md(namespace, better, gateway))
        step = wait_rollout(kubectl, namespace, NAME, "step 1 routed", phase="Progressing", routedWeight=10)
        assert (step["canaryReplicas"], step["stableReplicas"]) == (1, 3)
        _wait_backends(kubectl, namespace, [(f"{NAME}-stable", 90), (f"{NAME}-canary", 10)])
        ready(kubectl, namespace, NAME)
        converged(kubectl, namespace, NAME)
        own_operator.stop()
        time.sleep(2)
        own_operator.start(env=env)
        resumed = rollout_status(kubectl, namespace, NAME)
        assert (resumed["routedWeight"], resumed["stepStartedAt"]) == (10, step["stepStartedAt"])
        converged(kubectl, namespace, NAME)  # the restarted operator wants the same route

        def settled() -> bool:  # a server for each of the 4 pods, none for a pod that has gone
            servers.wait_for_servers(4)
            pods = set(servers.metrics_urls())
            revisions = Counter(servers.pod_labels[p].get(REVISION) for p in pods)
            return len(pods) == 4 and revisions == Counter({"stable": 3, "canary": 1})

        wait_for(settled, timeout=120, message="servers for 3 stable pods and 1 canary pod")
        wait_for(
            lambda: "accepted by Gateway" in rollout_status(kubectl, namespace, NAME).get("route", ""),
            timeout=60,
            message="the weighted route accepted",
        )
        before = _successes(servers)
        statuses = _send(url, REQUESTS, 4)
        assert statuses == Counter({200: REQUESTS}), statuses
        share = _canary_share(servers, before)
        # by replicas the canary would take 25 %; the Gateway gives it the step's weight
        assert 0.07 <= share <= 0.13, share

        kubectl("annotate", "md", NAME, f"{ACTION}=promote", namespace=namespace)
        promoted = wait_rollout(kubectl, namespace, NAME, "promoted", timeout=60, phase="Complete")
        assert promoted["stableRevision"] == step["canaryRevision"]
        assert promoted["routedWeight"] == 0 and promoted["canaryDrainUntil"], promoted  # drains first
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        wait_for(
            lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
            timeout=60,
            message="the canary Deployment gone after promotion",
        )
        converged(kubectl, namespace, NAME)

        # 3. a broken model under load through the Gateway: rolled back by its first analysis
        with _under_load(url, 2):
            kubectl.apply(_md(namespace, broken, gateway))
            routed = wait_rollout(kubectl, namespace, NAME, "the broken canary routed", routedWeight=10)

            def canary_serving() -> bool:
                return any(labels.get(REVISION) == "canary" for labels in servers.pod_labels_now())

            # a kwok pod is ready before its server is: the canary serves from here on
            wait_for(canary_serving, timeout=120, message="the broken canary's server up")
            serving = datetime.now(UTC)
            rolled_back = wait_rollout(
                kubectl, namespace, NAME, "rolled back", timeout=120, phase="RolledBack"
            )
        failed, _ = _judged_in_one_interval(rolled_back, routed["canaryRevision"], serving)
        error_ratio = next(m for m in failed["metrics"] if m["name"] == "errorRatio")
        assert error_ratio["verdict"] == "Failed" and error_ratio["canary"] > 0.3, error_ratio
        assert error_ratio["stable"] == 0.0, error_ratio
        # the route moved off the canary at once; its pods drain, then go, and the route is the one Service
        assert rolled_back["routedWeight"] == 0 and rolled_back["canaryDrainUntil"], rolled_back
        wait_for(  # Traefik applies the route a few seconds later; the canary's pods serve meanwhile
            lambda: _send(url, 40, 2) == Counter({200: 40}),
            timeout=DRAIN,
            message="the Gateway sends the broken canary nothing",
        )
        assert deployment(kubectl, namespace, f"{NAME}-canary") is not None  # still there, unrouted
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        wait_for(
            lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
            timeout=60,
            message="no canary Deployment left after the rollback",
        )
        assert _send(url, 40, 2) == Counter({200: 40})  # the stable serves every request, still
        converged(kubectl, namespace, NAME)

        # 4. day 2: back to the stable's model; hostnames added and removed; the Gateway unnamed
        kubectl.apply(_md(namespace, better, {**gateway, "hostnames": ["shop.example"]}))
        wait_for(
            lambda: (
                ((_route(kubectl, namespace) or {}).get("spec") or {}).get("hostnames") == ["shop.example"]
            ),
            timeout=60,
            message="the route's hostnames",
        )
        wait_rollout(kubectl, namespace, NAME, "settled on the stable", phase="Complete")
        converged(kubectl, namespace, NAME)
        wait_for(  # Traefik follows the route: only the route's hostname finds it
            lambda: (
                _send(url, 5, 1, host="shop.example") == Counter({200: 5})
                and _send(url, 5, 1, host="other.example") == Counter({404: 5})
            ),
            timeout=30,
            message="requests for shop.example routed, and only those",
        )
        kubectl.apply(_md(namespace, better, gateway))
        wait_for(
            lambda: "hostnames" not in ((_route(kubectl, namespace) or {}).get("spec") or {}),
            timeout=60,
            message="the route's hostnames removed",
        )
        converged(kubectl, namespace, NAME)

        kubectl.apply(_md(namespace, better, None))
        wait_for(lambda: _route(kubectl, namespace) is None, timeout=60, message="the HTTPRoute deleted")
        wait_for(
            lambda: (
                all(REVISION not in labels for labels in _pod_labels(kubectl, namespace))
                and len(_pod_labels(kubectl, namespace)) == 4
            ),
            timeout=120,
            message="the stable pods rolled without the revision label",
        )
        assert deployment(kubectl, namespace, f"{NAME}-canary") is None  # a rolling update, not a canary
        final = rollout_status(kubectl, namespace, NAME)
        assert final["phase"] == "Complete" and final.get("stableRevision") != stable["stableRevision"], final
        for service in (f"{NAME}-stable", f"{NAME}-canary"):
            assert kubectl("get", "service", service, namespace=namespace, check=False).returncode != 0
        converged(kubectl, namespace, NAME)
        ready(kubectl, namespace, NAME)
        assert md_body(kubectl, namespace, NAME)["status"]["rollout"].get("route") is None
    assert not servers.errors, servers.errors


LANGUAGE_MODEL = "chat"
# The time to first token decides: the slow canary's requests take longer too, but within 100 times.
# Each of its requests holds a client 300 ms, so it gets fewer than the fast one's: 5 suffice for a mean
# of 300 ms against 5 (the Gateway applies its weight some seconds into the analysis' window).
LM_ANALYSIS = {**ANALYSIS, "minRequests": 5, "maxLatencyRatio": 100, "maxTimeToFirstTokenRatio": 3}
COMPLETION = json.dumps(
    {"model": LANGUAGE_MODEL, "prompt": "Of the Refraction of Light", "max_tokens": 2}
).encode()
LM_REQUESTS = 500


def _lm_md(namespace: str, model: ModelSpec, openai: bool = True) -> str:
    gateway = {"name": GATEWAY, "drainSeconds": DRAIN}
    spec: dict[str, Any] = {
        "replicas": 4,
        "models": [model.wire()],
        "rollout": {"canary": {"steps": STEPS, "analysis": LM_ANALYSIS, "gateway": gateway}},
    }
    if not openai:
        spec["openai"] = {"enabled": False}
    return manifest(namespace, NAME, spec)


def _judged_in_one_interval(
    rolled_back: dict[str, Any], revision: str, serving: datetime
) -> tuple[dict[str, Any], float]:
    """The failed analysis that rolled `revision` back, and how long after its server came up it was
    judged: within one analysis interval (plus a scrape and a reconcile), and none passed it before."""
    analyses = [a for a in rolled_back["analyses"] if a["revision"] == revision]
    timeline = "\n".join(
        [f"the canary's server up at {serving.isoformat()}; its analyses:"]
        + [f"{a['at']} step {a['step']} {a['verdict']}: {a.get('message')}" for a in analyses]
    )
    print(timeline)
    assert analyses and analyses[-1]["verdict"] == "Failed" and analyses[-1]["step"] == 1, timeline
    assert all(a["verdict"] == "Inconclusive" for a in analyses[:-1]), timeline
    judged = (datetime.fromisoformat(analyses[-1]["at"]) - serving).total_seconds()
    assert judged <= ANALYSIS["intervalSeconds"] + 5, f"judged {judged:.1f} s after; {timeline}"
    return analyses[-1], judged


def _rules(kubectl: Kubectl, namespace: str) -> list[tuple[str, list[int]]]:
    """The route's rules: (path prefix, the backends' ports)."""
    route = _route(kubectl, namespace) or {"spec": {"rules": []}}
    return [
        (rule["matches"][0]["path"]["value"], [b["port"] for b in rule["backendRefs"]])
        for rule in route["spec"]["rules"]
    ]


def _stream(url: str) -> tuple[str, str]:
    """One streamed chat completion through the Gateway: (Content-Type, the events)."""
    body = {
        "model": LANGUAGE_MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3,
        "stream": True,
    }
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.headers["Content-Type"], response.read().decode()


def test_a_language_models_openai_api_is_split_too_and_a_slow_first_token_is_rolled_back(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, traefik: Traefik, stage: Stage
) -> None:
    """A language model's pods run the OpenAI front (port 9000) beside Triton: the route sends `/v1`
    there, with the canary's weight like every other path. 1. created: /v1 and / routed, a streamed
    chat completion through the Gateway; 2. a new model: 10 % +- 3 of the completions on the canary
    pod; 3. replaced while it runs by a model whose first token comes 60 times later: rolled back by
    the time-to-first-token analysis, with both means in status; 4. day 2: the front turned off while
    the operator is down: the /v1 rule goes with it once the change is promoted."""
    fast, faster, slow = (streaming_text_model(LANGUAGE_MODEL, first_token_ms=ms) for ms in (5.0, 4.0, 300.0))
    write_model(stage.models, fast)  # one folder: the sources differ only in config
    completions = f"{traefik.url}/v1/completions"

    kubectl.apply(_lm_md(namespace, fast))
    servers, env = stage.servers, stage.env
    with servers:
        # 1. both APIs routed to the one Service: OpenAI's on the front's port, Triton's on its own
        servers.wait_for_servers(4)
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        assert _rules(kubectl, namespace) == [("/v1", [9000]), ("/", [8000])]
        wait_rollout(kubectl, namespace, NAME, "created", phase="Complete")
        wait_for(
            lambda: _send(completions, 10, 2, body=COMPLETION) == Counter({200: 10}),
            timeout=30,
            message="completions through the Gateway",
        )
        content_type, events = _stream(f"{traefik.url}/v1/chat/completions")
        assert content_type.startswith("text/event-stream") and events.endswith("data: [DONE]\n\n"), events
        status = http_status(f"{traefik.url}/v2/models/{LANGUAGE_MODEL}/ready")
        assert status == 200, status  # Triton's own API, beside OpenAI's
        converged(kubectl, namespace, NAME)

        # 2. a new model: a tenth of the completions on the one canary pod of four
        kubectl.apply(_lm_md(namespace, faster))
        step = wait_rollout(kubectl, namespace, NAME, "step 1 routed", phase="Progressing", routedWeight=10)
        _wait_backends(kubectl, namespace, [(f"{NAME}-stable", 90), (f"{NAME}-canary", 10)])
        assert _rules(kubectl, namespace) == [("/v1", [9000, 9000]), ("/", [8000, 8000])]
        wait_for(
            lambda: (
                Counter(servers.pod_labels[p].get(REVISION) for p in servers.metrics_urls())
                == Counter({"stable": 3, "canary": 1})
            ),
            timeout=120,
            message="servers for 3 stable pods and 1 canary pod",
        )
        wait_for(
            lambda: "accepted by Gateway" in rollout_status(kubectl, namespace, NAME).get("route", ""),
            timeout=60,
            message="the weighted route accepted",
        )
        converged(kubectl, namespace, NAME)
        wait_for(  # Traefik applies an accepted route a few seconds later (its providers' throttle)
            lambda: _send(completions, 20, 2, body=COMPLETION) == Counter({200: 20}),
            timeout=30,
            message="completions through the weighted route",
        )
        before = _successes(servers, LANGUAGE_MODEL)
        statuses = _send(completions, LM_REQUESTS, 4, body=COMPLETION)
        assert statuses == Counter({200: LM_REQUESTS}), statuses
        share = _canary_share(servers, before, LANGUAGE_MODEL)
        assert 0.07 <= share <= 0.13, share

        # 3. replaced mid-step by a model with a slow first token, under load: rolled back on it
        with _under_load(completions, 8, COMPLETION):
            kubectl.apply(_lm_md(namespace, slow))
            replaced = wait_for(
                lambda: (
                    rollout
                    if (rollout := rollout_status(kubectl, namespace, NAME)).get("canaryRevision")
                    not in (None, step["canaryRevision"])
                    else None
                ),
                timeout=60,
                message="the slow model replaces the canary",
            )

            def slow_serving() -> bool:
                return any(
                    labels.get("kubeforge.io/canary-revision") == replaced["canaryRevision"]
                    for labels in servers.pod_labels_now()
                )

            wait_for(slow_serving, timeout=120, message="the slow canary's server up")
            serving = datetime.now(UTC)
            try:
                rolled_back = wait_rollout(
                    kubectl, namespace, NAME, "rolled back", timeout=120, phase="RolledBack"
                )
            except TimeoutError:
                raise AssertionError(f"not rolled back: {rollout_status(kubectl, namespace, NAME)}") from None
        failed, judged = _judged_in_one_interval(rolled_back, replaced["canaryRevision"], serving)
        ttft = next(m for m in failed["metrics"] if m["name"] == "timeToFirstTokenMs")
        assert ttft["verdict"] == "Failed" and ttft["canary"] > 3 * ttft["stable"], ttft
        assert ttft["canary"] >= 300 and "kubeforge_time_to_first_token_seconds" in ttft["canaryQuery"], ttft
        print(
            f"time to first token: canary {ttft['canary']:.1f} ms, stable {ttft['stable']:.1f} ms; "
            f"rolled back {judged:.1f} s after its server was up"
        )
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        wait_for(
            lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
            timeout=60,
            message="no canary Deployment left after the rollback",
        )
        assert _send(completions, 20, 2, body=COMPLETION) == Counter({200: 20})
        converged(kubectl, namespace, NAME)

        # 4. day 2: the front turned off while the operator is down; the change promoted; no /v1 rule
        own_operator.stop()
        kubectl.apply(_lm_md(namespace, fast, openai=False))
        own_operator.start(env=env)
        wait_rollout(kubectl, namespace, NAME, "the front's removal as a canary", phase="Progressing")
        wait_for(  # the route is the current spec's: no /v1, though the stable pods still run the front
            lambda: _rules(kubectl, namespace) == [("/", [8000, 8000])],
            timeout=30,
            message="the route without /v1",
        )
        kubectl("annotate", "md", NAME, f"{ACTION}=promote", namespace=namespace)
        wait_rollout(kubectl, namespace, NAME, "promoted", timeout=60, phase="Complete")
        _wait_backends(kubectl, namespace, [(NAME, 1)])
        assert _rules(kubectl, namespace) == [("/", [8000])]
        wait_for(
            lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
            timeout=60,
            message="the canary Deployment gone after promotion",
        )
        converged(kubectl, namespace, NAME)
        ready(kubectl, namespace, NAME)
    assert not servers.errors, servers.errors
