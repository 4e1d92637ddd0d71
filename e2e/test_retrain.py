"""Retrain -> evaluate -> canary -> promote, end to end (controllers/proposals.py, controllers/canary.py).

Four TrainingJobs of one pipeline (label `pipeline: shop`) and the ModelDeployment they feed:
1. job-1 trains and hands off: it creates the ModelDeployment (spec.output.modelDeployment), whose
   spec opts in to proposals (gate: better than the serving model) and rolls out as a canary;
2. job-2 recorded a worse validation loss: the gate refuses it, nothing changes;
3. job-3 recorded a better one: proposed, rolled out as a canary, analysed, promoted;
4. job-4 recorded the best loss, but its model fails every second execution: proposed, and rolled
   back by the canary's first analysis.

What is simulated: kwok runs no containers, so each job's worker exits by annotation with the
trainer's termination message (its validation loss), and the test writes each job's exported model
where its output.uri says (the reference trainer's export is proven in tests/trainer). What is real:
the API server and the operator's whole path (hand-off, gate, JSON patch, canary, analysis, status,
Events), a real tritonserver behind every serving pod, and the real Prometheus the analysis reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.convergence import model_deployment_differences
from e2e.front import IngressFront, Load
from e2e.kube import Kubectl, event_messages, wait_condition, wait_for
from e2e.operator_proc import OperatorProcess
from e2e.podservers import PodServers
from e2e.prometheus import Prometheus
from kubeforge.settings import Settings
from kubeforge.testing.workloads import FIXED_COST_MODEL_PY, fixed_cost_model, write_model

pytestmark = [pytest.mark.e2e, pytest.mark.serial]
MD = "shop"
MODEL = fixed_cost_model("shop", max_batch_size=0, batching=False, step_ms=2.0)
PIPELINE = {"pipeline": "shop"}
SIM = {"sim.kubeforge.io/exit-code": "0", "sim.kubeforge.io/exit-after": "1s"}
ROLLOUT = {
    "canary": {
        "steps": [{"weight": 34, "pauseSeconds": 10}],
        "analysis": {
            "intervalSeconds": 10,
            "minRequests": 20,
            "maxErrorRatioIncrease": 0.05,
            "maxLatencyRatio": 20,
        },
    },
    "proposals": {"jobLabels": PIPELINE, "model": "shop", "gate": {"betterThanServing": True}},
}


def _job(namespace: str, name: str, loss: float, output: dict[str, Any]) -> str:
    message = json.dumps({"state": "succeeded", "step": 100, "validation": {"step": 100, "loss": loss}})
    return json.dumps(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace, "labels": PIPELINE},
            "spec": {
                "image": "ghcr.io/kubeforge/kubeforge-trainer:0.1.0",
                "workers": 1,
                "podMetadata": {"annotations": {**SIM, "sim.kubeforge.io/message": message}},
                "output": {"uri": f"pvc://models/{name}", "modelName": "shop", "format": "python", **output},
            },
        }
    )


def _get(kubectl: Kubectl, kind: str, name: str, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = kubectl.json("get", kind, name, namespace=namespace)
    return obj


def _proposal(kubectl: Kubectl, namespace: str, job: str, phase: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        proposal = (_get(kubectl, "tj", job, namespace).get("status") or {}).get("proposal") or {}
        return proposal if proposal.get("phase") == phase else None

    return wait_for(check, timeout=180, message=f"{job}'s proposal {phase}")


def _rollout(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    rollout: dict[str, Any] = (_get(kubectl, "md", MD, namespace).get("status") or {}).get("rollout") or {}
    return rollout


def _source(kubectl: Kubectl, namespace: str) -> str:
    source: str = _get(kubectl, "md", MD, namespace)["spec"]["models"][0]["source"]
    return source


def _converged(kubectl: Kubectl, namespace: str) -> None:
    wait_for(
        lambda: not model_deployment_differences(kubectl, MD, namespace, Settings()),
        timeout=60,
        message=f"the children of {MD} equal what the builders make of its spec",
    )


def _write_models(pvc: Path) -> None:
    """Each job's export, where its output.uri says: job-4's model fails every second execution."""
    for job in ("job-1", "job-2", "job-3", "job-4"):
        folder = write_model(pvc / "models" / job, MODEL)
    broken = FIXED_COST_MODEL_PY.replace('int(params.get("error_every", "0"))', "2")
    assert broken != FIXED_COST_MODEL_PY
    (folder / "1" / "model.py").write_text(broken)


def test_retrained_models_are_gated_canaried_promoted_or_rolled_back(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    models_claim: str,
    analysis_prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    prometheus = analysis_prometheus
    own_operator.start(env={"KUBEFORGE_PROMETHEUS_ADDRESS": prometheus.url})
    pvc = tmp_path / "pvc"
    _write_models(pvc)
    template = {"name": MD, "spec": {"replicas": 3, "models": [MODEL.wire()], "rollout": ROLLOUT}}

    # 1. job-1 trains and creates the ModelDeployment: its evaluation is what later jobs must beat
    kubectl.apply(_job(namespace, "job-1", 1.5, {"modelDeployment": template}))
    wait_condition(kubectl, "tj", "job-1", "Succeeded", "True", namespace=namespace, timeout=60)
    servers = PodServers(kubectl, namespace, MD, pvc, tmp_path / "servers", prometheus.set_targets)
    with servers, IngressFront(namespace, MD, servers.http_addresses) as front:
        wait_condition(kubectl, "md", MD, "Ready", "True", namespace=namespace, timeout=120)
        md = _get(kubectl, "md", MD, namespace)
        assert md["status"]["trainedModel"] == {
            "job": "job-1",
            "uri": "pvc://models/job-1/shop",
            "validationLoss": 1.5,
        }
        servers.wait_for_servers(3)
        _converged(kubectl, namespace)

        # bounded in time and count; 2 clients give the analyses far more than minRequests per window
        with Load(front, MODEL.name, clients=2, seconds=600, max_requests=300_000):
            # 2. job-2 is worse: refused by the gate, in both objects' Events
            kubectl.apply(_job(namespace, "job-2", 1.8, {"proposeTo": MD}))
            refused = _proposal(kubectl, namespace, "job-2", "Refused")
            assert "validation loss 1.8 is not lower than 1.5" in refused["message"], refused
            assert _source(kubectl, namespace) == "pvc://models/job-1/shop"
            assert event_messages(kubectl, namespace, "ModelDeployment", MD, "ProposalRefused")
            assert event_messages(kubectl, namespace, "TrainingJob", "job-2", "ProposalRefused")

            # 3. job-3 is better: proposed, a canary, analysed, promoted
            kubectl.apply(_job(namespace, "job-3", 1.2, {"proposeTo": MD}))
            proposed = _proposal(kubectl, namespace, "job-3", "Proposed")
            assert "lower than 1.5, the serving model's (TrainingJob job-1)" in proposed["message"]
            assert _source(kubectl, namespace) == "pvc://models/job-3/shop"
            canary = wait_for(
                lambda: _rollout(kubectl, namespace).get("proposal"), timeout=60, message="job-3's canary"
            )
            assert canary == {"job": "job-3", "uri": "pvc://models/job-3/shop", "validationLoss": 1.2}
            promoted = _proposal(kubectl, namespace, "job-3", "Promoted")
            assert promoted["message"] == f"ModelDeployment {MD} serves it"
            md = _get(kubectl, "md", MD, namespace)
            assert md["status"]["trainedModel"]["job"] == "job-3"
            assert [a["verdict"] for a in md["status"]["rollout"]["analyses"]][-1] == "Passed"
            assert event_messages(kubectl, namespace, "ModelDeployment", MD, "ProposalAccepted")
            assert event_messages(kubectl, namespace, "TrainingJob", "job-3", "ProposalPromoted")
            _converged(kubectl, namespace)

            # 4. job-4's model is broken: the gate passes it (1.0 < 1.2), the live analysis does not
            kubectl.apply(_job(namespace, "job-4", 1.0, {"proposeTo": MD}))
            rolled_back = _proposal(kubectl, namespace, "job-4", "RolledBack")
            assert "errorRatio canary" in rolled_back["message"], rolled_back
            md = _get(kubectl, "md", MD, namespace)
            assert md["status"]["rollout"]["phase"] == "RolledBack"
            assert md["status"]["trainedModel"]["job"] == "job-3"  # the stable still serves job-3's model
            assert event_messages(kubectl, namespace, "TrainingJob", "job-4", "ProposalRolledBack")
            _converged(kubectl, namespace)
    assert not servers.errors, servers.errors
