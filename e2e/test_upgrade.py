"""Operator upgrades, rollbacks and CRD skew against the real control plane: nothing restarts.

The "new release" is this checkout with e2e/release_shim on PYTHONPATH: its builders add an env
var to every pod template, and it runs with another helper image, as a real release would
render the same spec differently. Running TrainingJobs keep their attempt; ModelDeployments roll
one at a time (KUBEFORGE_OPERATOR_ROLLOUTS=1), each once the one before it completed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import Kubectl, wait_condition, wait_for
from e2e.operator_proc import OperatorProcess

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
SHIM = Path(__file__).resolve().parent / "release_shim"
MODELS = ("alpha", "beta", "gamma")
NEW_RELEASE = {
    "PYTHONPATH": os.pathsep.join(p for p in (str(SHIM), os.environ.get("PYTHONPATH")) if p),
    "KUBEFORGE_E2E_RELEASE": "2",
    "KUBEFORGE_HELPER_IMAGE": "registry.local/kubeforge-operator:2",
    "KUBEFORGE_OPERATOR_ROLLOUTS": "1",
}
OLD_RELEASE = {"KUBEFORGE_OPERATOR_ROLLOUTS": "1"}


def _md(namespace: str, name: str) -> str:
    doc = yaml.safe_load((EXAMPLES / "model-deployment.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"].pop("autoscaling")
    # each new pod starts 2 s after it is created, so that a rollout takes a few seconds (GPU
    # servers roll one pod at a time) and rollouts that overlap are seen overlapping
    doc["spec"].update(
        replicas=2, gpu={"count": 1}, podMetadata={"annotations": {"sim.kubeforge.io/start-after": "2s"}}
    )
    return json.dumps(doc)


def _tj(namespace: str, name: str) -> str:
    doc = yaml.safe_load((EXAMPLES / "training-job.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"]["gpu"] = {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}
    doc["spec"].pop("checkpoint", None)
    return json.dumps(doc)


def _rolling(dep: dict[str, Any]) -> bool:
    """A Deployment whose rollout has not completed (a new template not yet everywhere and ready)."""
    status, replicas = dep.get("status", {}), dep["spec"]["replicas"]
    return (
        status.get("observedGeneration", 0) < dep["metadata"]["generation"]
        or status.get("updatedReplicas", 0) < replicas
        or status.get("availableReplicas", 0) < replicas
        or status.get("replicas", 0) > replicas
    )


def _release(dep: dict[str, Any]) -> str | None:
    env = dep["spec"]["template"]["spec"]["containers"][0].get("env") or []
    return next((e["value"] for e in env if e["name"] == "KUBEFORGE_E2E_RELEASE"), None)


class RolloutWatch:
    """Polls the Deployments in the background: the most that were rolling at once."""

    def __init__(self, kubectl: Kubectl, namespace: str) -> None:
        self.kubectl, self.namespace = kubectl, namespace
        self.most_at_once = 0
        self.seen: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def deployments(self) -> dict[str, dict[str, Any]]:
        items = self.kubectl.json("get", "deployments", namespace=self.namespace)["items"]
        return {d["metadata"]["name"]: d for d in items}

    def _run(self) -> None:
        while not self._stop.is_set():
            rolling = sorted(n for n, d in self.deployments().items() if _rolling(d))
            if rolling and (not self.seen or self.seen[-1] != rolling):
                self.seen.append(rolling)
            self.most_at_once = max(self.most_at_once, len(rolling))
            time.sleep(0.3)

    def __enter__(self) -> RolloutWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _training_state(kubectl: Kubectl, namespace: str) -> tuple[Any, ...]:
    tj = kubectl.json("get", "tj", "train", namespace=namespace)
    job = kubectl.json("get", "job", "train-0", namespace=namespace)
    status = tj["status"]
    return (
        status["phase"],
        status["attempt"],
        status["restarts"],
        status.get("startTime"),
        job["metadata"]["uid"],
    )


def _all_on(kubectl: Kubectl, namespace: str, release: str | None) -> dict[str, dict[str, Any]] | None:
    deployments = {
        d["metadata"]["name"]: d for d in kubectl.json("get", "deployments", namespace=namespace)["items"]
    }
    done = all(_release(deployments[n]) == release and not _rolling(deployments[n]) for n in MODELS)
    return deployments if done else None


def _switch(own_operator: OperatorProcess, env: dict[str, str]) -> None:
    own_operator.stop()
    own_operator.start(env=env)


def test_an_upgrade_and_a_rollback_restart_no_job_and_roll_one_model_deployment_at_a_time(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str
) -> None:
    own_operator.start(env=OLD_RELEASE)
    kubectl.apply(_tj(namespace, "train"))
    for name in MODELS:
        kubectl.apply(_md(namespace, name))
    for name in MODELS:
        wait_condition(kubectl, "md", name, "Ready", namespace=namespace, timeout=90)
    wait_condition(kubectl, "tj", "train", "Running", namespace=namespace, timeout=90)
    before = _training_state(kubectl, namespace)
    assert before[:3] == ("Running", 0, 0)
    job_template = kubectl.json("get", "job", "train-0", namespace=namespace)["spec"]["template"]

    for release, env in (("2", NEW_RELEASE), (None, OLD_RELEASE)):  # the upgrade, then the rollback
        with RolloutWatch(kubectl, namespace) as watch:
            _switch(own_operator, env)
            deployments = wait_for(
                lambda release=release: _all_on(kubectl, namespace, release),  # type: ignore[misc]
                timeout=180,
                message=f"every Deployment rolled to release {release}",
            )
        assert watch.most_at_once == 1, watch.seen  # one at a time, never the fleet at once
        assert len(watch.seen) >= len(MODELS), watch.seen
        helper = deployments[MODELS[0]]["spec"]["template"]["spec"]["initContainers"][0]["image"]
        assert (helper == NEW_RELEASE["KUBEFORGE_HELPER_IMAGE"]) is (release == "2")
        # the running job: the same Job, attempt, restarts and start time; its template untouched
        assert _training_state(kubectl, namespace) == before
        job = kubectl.json("get", "job", "train-0", namespace=namespace)
        assert job["spec"]["template"] == job_template
        for name in MODELS:
            wait_condition(kubectl, "md", name, "Ready", namespace=namespace, timeout=60)
    log = own_operator.log_text()
    assert "operator rollout of a new pod template started" in log


def _with_future_field(path: Path) -> str:
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        spec["properties"]["futureField"] = {"type": "string", "default": "on"}
    return json.dumps(crd)


def test_a_newer_crd_with_a_defaulted_field_fails_nothing_and_restarts_nothing(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str, crds_restored: None
) -> None:
    own_operator.start()
    kubectl.apply(_tj(namespace, "train"))
    kubectl.apply(_md(namespace, "alpha"))
    wait_condition(kubectl, "md", "alpha", "Ready", namespace=namespace, timeout=90)
    wait_condition(kubectl, "tj", "train", "Running", namespace=namespace, timeout=90)
    before = _training_state(kubectl, namespace)
    deployment = kubectl.json("get", "deployment", "alpha", namespace=namespace)

    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        kubectl.apply(_with_future_field(path), server_side=True)
    wait_for(
        lambda: kubectl.json("get", "tj", "train", namespace=namespace)["spec"].get("futureField") == "on",
        timeout=30,
        message="the API server serving the new default",
    )
    own_operator.stop()  # a restart reads every object afresh, with the new default
    own_operator.start()
    for kind, name in (("tj", "train"), ("md", "alpha")):  # and an event for each, to be sure
        kubectl("annotate", kind, name, "e2e/poke=1", "--overwrite", namespace=namespace)

    def warned() -> bool:
        events = kubectl.json("get", "events", namespace=namespace)["items"]
        reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
        return {("train", "UnknownFields"), ("alpha", "UnknownFields")} <= reasons

    wait_for(warned, timeout=30, message="UnknownFields reported for both")
    time.sleep(3)  # a few reconciles more
    assert _training_state(kubectl, namespace) == before
    tj = kubectl.json("get", "tj", "train", namespace=namespace)
    assert all(c["reason"] != "InvalidSpec" for c in tj["status"]["conditions"])
    md = wait_condition(kubectl, "md", "alpha", "Ready", namespace=namespace, timeout=30)
    assert md["status"]["phase"] == "Ready"
    after = kubectl.json("get", "deployment", "alpha", namespace=namespace)
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
