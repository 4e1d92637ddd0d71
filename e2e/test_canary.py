"""Canary rollouts end to end (spec.rollout.canary, controllers/canary.py), on real Triton metrics.

Each simulated serving pod, stable or canary, is backed by a real tritonserver started from the pod's
own spec (e2e/podservers.py) and scraped by the real Prometheus under its `namespace` and `pod`
labels. Requests go round-robin over every serving pod (e2e/front.py, a Service's balancing over
its endpoints), so the canary takes its share of the replicas. The operator asks that Prometheus
for its analyses. The step timing is shortened to the test's timescale (10 s pauses and windows).

One ModelDeployment lives through the whole story:
1. plain, then `rollout.canary` added (nothing rolls: the template is the same);
2. a good new model: canary at step 1 (1 of 3 replicas), the operator restarted mid-step (the step
   and its clock survive), step 2 (2 of 3), paused and scaled to 5 through /scale (the autoscaler's
   way: 3 canary, 2 stable), resumed, promoted; the children converge on the spec;
3. a broken model (every 2nd request fails): rolled back by the first analysis, the numbers in
   status, no canary left, the stable still serving the previous template;
4. a third model, paused by annotation, aborted and retried by the verbs, then `rollout` removed:
   it settles on the current spec.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from e2e.front import IngressFront, Load
from e2e.kube import Kubectl, event_messages, find_condition, wait_for
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
from kubeforge.controllers.rollout import WORKLOAD_TEMPLATE_ANNOTATION
from kubeforge.testing.workloads import write_model

pytestmark = [pytest.mark.e2e, pytest.mark.serial]
NAME = "shop"
STEPS = [{"weight": 30, "pauseSeconds": 10}, {"weight": 60, "pauseSeconds": 10}]
ANALYSIS = {"intervalSeconds": 10, "minRequests": 20, "maxErrorRatioIncrease": 0.05, "maxLatencyRatio": 20}


def _md(namespace: str, model: ModelSpec, rollout: dict[str, Any] | None) -> str:
    spec: dict[str, Any] = {"replicas": 3, "models": [model.wire()]}
    return manifest(namespace, NAME, {**spec, "rollout": rollout} if rollout is not None else spec)


def test_a_canary_is_analysed_promoted_and_a_broken_one_rolled_back(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    analysis_prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    prometheus = analysis_prometheus
    env = {"KUBEFORGE_PROMETHEUS_ADDRESS": prometheus.url}
    own_operator.start(env=env)
    good, better, broken, third = (
        fixed_model(2.0),
        fixed_model(3.0),
        fixed_model(2.0, error_every=2),
        fixed_model(4.0),
    )
    pvc = tmp_path / "pvc"
    for model in (good, better, broken, third):
        write_model(pvc / "models", model)  # one folder: the sources differ only in config

    canary = {"canary": {"steps": STEPS, "analysis": ANALYSIS}}
    kubectl.apply(_md(namespace, good, None))
    servers = PodServers(kubectl, namespace, NAME, pvc, tmp_path / "servers", prometheus.set_targets)
    with servers, IngressFront(namespace, NAME, servers.http_addresses) as front:
        servers.wait_for_servers(3)
        # 1. rollout.canary added: the same template, nothing rolls
        kubectl.apply(_md(namespace, good, canary))
        stable = wait_rollout(kubectl, namespace, NAME, "canary configured", phase="Complete")
        assert deployment(kubectl, namespace, f"{NAME}-canary") is None
        converged(kubectl, namespace, NAME)

        # bounded in time and count; 2 clients give the analyses far more than minRequests per window
        with Load(front, MODEL, clients=2, seconds=600, max_requests=300_000):
            # 2. a better model: canary steps, an operator restart mid-step, promotion
            kubectl.apply(_md(namespace, better, canary))
            step1 = wait_rollout(kubectl, namespace, NAME, "step 1 under way", phase="Progressing", step=1)
            assert step1["canaryRevision"] != stable["stableRevision"]
            assert (step1["canaryReplicas"], step1["stableReplicas"]) == (1, 2)  # ceil(30% of 3), the rest
            ready(kubectl, namespace, NAME)  # on the stable revision, throughout the steps
            started = wait_for(
                lambda: rollout_status(kubectl, namespace, NAME).get("stepStartedAt"),
                timeout=120,
                message="the canary's pod ready: step 1's clock started",
            )
            converged(kubectl, namespace, NAME)  # mid-step: the canary is what the builders make at 1 replica
            own_operator.stop()
            time.sleep(3)
            own_operator.start(env=env)
            resumed = rollout_status(kubectl, namespace, NAME)
            assert (resumed["step"], resumed["stepStartedAt"]) == (1, started)  # not repeated, same clock
            wait_rollout(kubectl, namespace, NAME, "step 2", timeout=120, step=2)
            # paused at once: step 2 holds at least its 10 s pause from its second canary pod's readiness
            kubectl("annotate", "md", NAME, "kubeforge.io/rollout-paused=true", namespace=namespace)
            step2 = wait_rollout(
                kubectl, namespace, NAME, "step 2, paused", timeout=30, step=2, phase="Paused"
            )
            assert (step2["canaryReplicas"], step2["stableReplicas"]) == (2, 1)
            ready(kubectl, namespace, NAME)
            # the autoscaler's way (/scale) scales the whole; the step splits it: ceil(60% of 5), the rest
            kubectl("scale", "md", NAME, "--replicas=5", namespace=namespace)
            wait_rollout(kubectl, namespace, NAME, "5 replicas split", canaryReplicas=3, stableReplicas=2)
            wait_for(
                lambda: (
                    [
                        (deployment(kubectl, namespace, d) or {}).get("spec", {}).get("replicas")
                        for d in (NAME, f"{NAME}-canary")
                    ]
                    == [2, 3]
                ),
                timeout=30,
                message="the Deployments at 2 stable and 3 canary replicas",
            )
            kubectl("annotate", "md", NAME, "kubeforge.io/rollout-paused-", namespace=namespace)
            promoted = wait_rollout(kubectl, namespace, NAME, "promoted", timeout=180, phase="Complete")
            assert promoted["stableRevision"] == step1["canaryRevision"]
            passed = [a for a in promoted["analyses"] if a["verdict"] == "Passed"]
            assert {a["step"] for a in passed} == {1, 2}, promoted["analyses"]
            metrics = {m["name"]: m for m in passed[-1]["metrics"]}
            assert metrics["requests"]["canary"] >= ANALYSIS["minRequests"]
            assert metrics["errorRatio"]["canary"] == 0.0
            assert 'pod=~"shop-canary-' in metrics["errorRatio"]["canaryQuery"]  # the canary's pods by name
            # each step passed once: none skipped, none repeated across the restart
            assert sorted(
                m for m in event_messages(kubectl, namespace, "ModelDeployment", NAME, "CanaryStepPassed")
            ) == [f"step 1/2 of {step1['canaryRevision']} passed"]
            wait_for(
                lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
                timeout=60,
                message="the canary Deployment gone after promotion",
            )
            assert (deployment(kubectl, namespace, NAME) or {})["spec"]["replicas"] == 5
            converged(kubectl, namespace, NAME)
            kubectl("scale", "md", NAME, "--replicas=3", namespace=namespace)
            converged(kubectl, namespace, NAME)

            # 3. a broken model: rolled back by its first analysis
            kubectl.apply(_md(namespace, broken, canary))
            broken_step = wait_rollout(
                kubectl, namespace, NAME, "the broken canary's step 1", phase="Progressing"
            )
            rolled_back = wait_rollout(
                kubectl, namespace, NAME, "rolled back", timeout=120, phase="RolledBack"
            )
            failed = rolled_back["analyses"][-1]
            summary = [
                (a["step"], a["revision"], a["verdict"], a["message"]) for a in rolled_back["analyses"]
            ]
            assert failed["verdict"] == "Failed" and failed["step"] == 1, summary
            error_ratio = next(m for m in failed["metrics"] if m["name"] == "errorRatio")
            assert error_ratio["verdict"] == "Failed" and error_ratio["canary"] > 0.3, error_ratio
            assert error_ratio["stable"] == 0.0
            assert rolled_back["rolledBackRevision"] == broken_step["canaryRevision"]
            degraded = find_condition(md_body(kubectl, namespace, NAME), "Degraded")
            assert degraded is not None and degraded["status"] == "True", degraded
            assert degraded["reason"] == "RolledBack", degraded
            ready(kubectl, namespace, NAME)  # once the stable is back at 3 replicas
            assert "errorRatio canary" in degraded["message"]
            wait_for(
                lambda: deployment(kubectl, namespace, f"{NAME}-canary") is None,
                timeout=60,
                message="no canary Deployment left after the rollback",
            )
            live = deployment(kubectl, namespace, NAME)
            assert live is not None
            assert live["metadata"]["annotations"][WORKLOAD_TEMPLATE_ANNOTATION] == promoted["stableRevision"]
            assert live["spec"]["replicas"] == 3
            assert event_messages(kubectl, namespace, "ModelDeployment", NAME, "RolledBack")
            converged(kubectl, namespace, NAME)

            # 4. a third model paused at step 1; aborted and retried by verb; then rollout removed:
            # the current spec takes over
            kubectl.apply(_md(namespace, third, canary))
            kubectl("annotate", "md", NAME, "kubeforge.io/rollout-paused=true", namespace=namespace)
            paused = wait_rollout(kubectl, namespace, NAME, "paused", phase="Paused")
            kubectl("annotate", "md", NAME, f"{ACTION}=abort", namespace=namespace)
            aborted = wait_rollout(
                kubectl, namespace, NAME, "aborted by verb", timeout=60, phase="RolledBack"
            )
            assert aborted["rolledBackRevision"] == paused["canaryRevision"]
            assert f"aborted by {ACTION}=abort" in aborted["message"]
            wait_for(
                lambda: (
                    ACTION not in (md_body(kubectl, namespace, NAME)["metadata"].get("annotations") or {})
                ),
                timeout=30,
                message="the verb's annotation removed once acted on",
            )
            kubectl("annotate", "md", NAME, f"{ACTION}=retry", namespace=namespace)
            retried = wait_rollout(
                kubectl, namespace, NAME, "retried by verb", timeout=60, phase="Paused", step=1
            )
            assert retried["canaryRevision"] == paused["canaryRevision"]
            kubectl.apply(_md(namespace, third, None))
            wait_for(
                lambda: (
                    not rollout_status(kubectl, namespace, NAME)
                    and deployment(kubectl, namespace, f"{NAME}-canary") is None
                ),
                timeout=60,
                message="rollout removed: no canary, no status.rollout",
            )
            converged(kubectl, namespace, NAME)
            assert event_messages(kubectl, namespace, "ModelDeployment", NAME, "CanaryCancelled")
    assert not servers.errors, servers.errors
