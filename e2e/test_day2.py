"""Day 2 against the real control plane: edits, name clashes, the hand-off, API errors, honest
availability, GitOps health computed by Flux's own library, and crash safety of TrainingJobs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kstatus import compute
from e2e.kube import Kubectl, find_condition, wait_condition, wait_for
from e2e.operator_proc import OperatorProcess
from e2e.storage import bound_claim

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXIT_CODE = "sim.kubeforge.io/exit-code"
EXIT_AFTER = "sim.kubeforge.io/exit-after"
START_AFTER = "sim.kubeforge.io/start-after"


def _md(namespace: str, name: str = "resnet50", **spec: Any) -> str:
    doc = yaml.safe_load((EXAMPLES / "model-deployment.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"].pop("autoscaling")
    for key, value in spec.items():
        doc["spec"][key] = value
    return json.dumps(doc)


def _tj(namespace: str, name: str = "resnet50", **spec: Any) -> str:
    doc = yaml.safe_load((EXAMPLES / "training-job.yaml").read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    doc["spec"]["gpu"] = {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}
    doc["spec"]["failurePolicy"]["backoffSeconds"] = 1
    doc["spec"].pop("checkpoint", None)
    for key, value in spec.items():
        doc["spec"][key] = value
    return json.dumps(doc)


def _annotations(**annotations: str) -> dict[str, Any]:
    return {"annotations": annotations}


def _warnings(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    events = kubectl.json(
        "get", "events", "--field-selector", f"involvedObject.name={name}", namespace=namespace
    )
    return [e for e in events["items"] if e["type"] == "Warning"]


# -- 1. a field removed from the spec leaves the children -----------------------------------------


def test_fields_removed_from_the_spec_leave_the_deployment(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(
        _md(
            namespace,
            gpu={"count": 1, "product": "NVIDIA-H100-80GB-HBM3"},
            runtime={"env": [{"name": "FOO", "value": "bar"}]},
            placement={"nodeSelector": {"kubeforge.io/pool": "serving"}},
            resources={"cpu": "4", "memory": "16Gi", "cpuLimit": "8"},
        )
    )
    wait_for(
        lambda: "FOO" in json.dumps(kubectl.json("get", "deployment", "resnet50", namespace=namespace)),
        timeout=30,
        message="the first Deployment",
    )
    kubectl.apply(_md(namespace, gpu={"count": 1}, resources={"cpu": "4", "memory": "16Gi"}))

    def converged() -> dict[str, Any] | None:
        md = kubectl.json("get", "md", "resnet50", namespace=namespace)
        if md.get("status", {}).get("observedGeneration") != md["metadata"]["generation"]:
            return None
        return dict(kubectl.json("get", "deployment", "resnet50", namespace=namespace))

    dep = wait_for(converged, timeout=30, message="observedGeneration")
    pod = dep["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert "H100" not in json.dumps(pod.get("affinity") or {})
    assert "FOO" not in json.dumps(triton.get("env") or [])
    assert "nodeSelector" not in pod
    assert "cpu" not in triton["resources"].get("limits", {})


# -- 2. name clashes -----------------------------------------------------------------------------


def test_a_training_job_and_a_model_deployment_may_share_a_name(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_md(namespace))
    kubectl.apply(_tj(namespace, podMetadata=_annotations(**{EXIT_CODE: "0", EXIT_AFTER: "2s"})))
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    tj = wait_condition(kubectl, "tj", "resnet50", "Succeeded", "True", namespace=namespace, timeout=60)
    assert tj["status"]["restarts"] == 0
    svc = kubectl.json("get", "service", "resnet50-workers", namespace=namespace)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    served = kubectl.json("get", "service", "resnet50", namespace=namespace)
    assert served["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"


def test_a_child_name_taken_by_a_user_object_is_a_conflict_not_a_takeover(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    user_service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "resnet50", "namespace": namespace, "labels": {"owner": "someone-else"}},
        "spec": {"selector": {"app": "legacy"}, "ports": [{"port": 80}]},
    }
    kubectl.apply(json.dumps(user_service))
    before = kubectl.json("get", "service", "resnet50", namespace=namespace)
    kubectl.apply(_md(namespace))
    md = wait_condition(kubectl, "md", "resnet50", "Stalled", "True", namespace=namespace, timeout=30)
    ready = find_condition(md, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "ChildConflict")
    assert "Service" in ready["message"] and "resnet50" in ready["message"]
    assert md["status"]["phase"] == "Failed"
    time.sleep(2)  # retries happen (slowly); none may touch the user's Service
    after = kubectl.json("get", "service", "resnet50", namespace=namespace)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert "ownerReferences" not in after["metadata"]
    conflicts = [e for e in _warnings(kubectl, namespace, "resnet50") if e["reason"] == "ChildConflict"]
    assert len(conflicts) == 1, conflicts
    # the other children were applied regardless
    kubectl.json("get", "deployment", "resnet50", namespace=namespace)

    kubectl("delete", "service", "resnet50", namespace=namespace)
    md = wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    assert find_condition(md, "Stalled")["status"] == "False"  # type: ignore[index]


def test_a_training_job_reports_a_clash_on_its_service(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    clash = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "train-workers", "namespace": namespace},
        "spec": {"clusterIP": "None", "selector": {"app": "x"}, "ports": [{"port": 80}]},
    }
    kubectl.apply(json.dumps(clash))
    kubectl.apply(_tj(namespace, name="train"))
    tj = wait_condition(kubectl, "tj", "train", "Stalled", "True", namespace=namespace, timeout=30)
    assert tj["status"]["phase"]  # never an empty status: kubectl get tj shows why
    stalled = find_condition(tj, "Stalled")
    assert stalled is not None and stalled["reason"] == "ChildConflict"
    assert "train-workers" in stalled["message"]
    assert kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0


# -- 3. train -> serve leaves the served model to its users -------------------------------------


def _train_then_serve_claims(kubectl: Kubectl, namespace: str) -> None:
    for claim in ("model-store", "training-checkpoints"):
        bound_claim(kubectl, namespace, claim)


def test_the_hand_off_never_resets_a_scaled_model_deployment(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    _train_then_serve_claims(kubectl, namespace)
    doc = yaml.safe_load((EXAMPLES / "train-then-serve.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["podMetadata"] = _annotations(**{EXIT_CODE: "0", EXIT_AFTER: "1s"})
    kubectl.apply(json.dumps(doc))
    wait_condition(kubectl, "tj", "tabular-mlp", "Succeeded", "True", namespace=namespace, timeout=60)
    wait_for(
        lambda: kubectl("get", "md", "tabular-mlp-serving", namespace=namespace, check=False).returncode == 0,
        timeout=30,
        message="the hand-off ModelDeployment",
    )
    kubectl("scale", "md", "tabular-mlp-serving", "--replicas=3", namespace=namespace)
    kubectl("annotate", "tj", "tabular-mlp", "touched=1", namespace=namespace)
    kubectl(
        "patch",
        "tj",
        "tabular-mlp",
        "--type=merge",
        "-p",
        '{"spec":{"runPolicy":{"ttlSecondsAfterFinished":3600}}}',
        namespace=namespace,
    )
    wait_for(
        lambda: (
            kubectl.json("get", "tj", "tabular-mlp", namespace=namespace)["status"]["observedGeneration"] == 2
        ),
        timeout=30,
        message="the edited job reconciled",
    )
    time.sleep(2)
    assert kubectl.json("get", "md", "tabular-mlp-serving", namespace=namespace)["spec"]["replicas"] == 3


def test_the_hand_off_never_takes_over_a_model_deployment_it_did_not_create(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_md(namespace, name="tabular-mlp-serving", replicas=2))
    theirs = kubectl.json("get", "md", "tabular-mlp-serving", namespace=namespace)
    _train_then_serve_claims(kubectl, namespace)
    doc = yaml.safe_load((EXAMPLES / "train-then-serve.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["podMetadata"] = _annotations(**{EXIT_CODE: "0", EXIT_AFTER: "1s"})
    kubectl.apply(json.dumps(doc))
    tj = wait_condition(kubectl, "tj", "tabular-mlp", "Stalled", "True", namespace=namespace, timeout=60)
    assert tj["status"]["phase"] == "Succeeded"  # the training did succeed; the hand-off did not
    assert find_condition(tj, "Stalled")["reason"] == "ChildConflict"  # type: ignore[index]
    assert find_condition(tj, "Ready")["status"] == "False"  # type: ignore[index]
    now = kubectl.json("get", "md", "tabular-mlp-serving", namespace=namespace)
    assert now["spec"] == theirs["spec"]


# -- 4. API errors reach status and Events, with backoff ------------------------------------------


@pytest.fixture
def replica_policy(kubectl: Kubectl, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A ValidatingAdmissionPolicy refusing Deployments of more than 2 replicas in the namespace."""
    reason = request.param
    name = f"max-two-replicas-{namespace}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["apps"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["deployments"],
                    }
                ]
            },
            "validations": [
                {
                    "expression": "object.spec.replicas <= 2",
                    "message": "at most 2 replicas per Deployment in this namespace",
                    "reason": reason,
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    kubectl.apply(json.dumps(policy))
    kubectl.apply(json.dumps(binding))
    probe = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }

    def enforced() -> bool:
        result = kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), namespace=namespace, check=False
        )
        return result.returncode != 0 and "at most 2 replicas" in result.stderr

    wait_for(enforced, timeout=30, message="the admission policy in force")
    yield reason
    kubectl("delete", "validatingadmissionpolicybinding", name, check=False)
    kubectl("delete", "validatingadmissionpolicy", name, check=False)


@pytest.mark.parametrize("replica_policy", ["Invalid", "Forbidden"], indirect=True)
def test_an_api_error_is_in_status_and_events_once_and_retried_slowly(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, models_claim: str, replica_policy: str
) -> None:
    kubectl.apply(_md(namespace, replicas=3, gpu=None))
    md = wait_condition(kubectl, "md", "resnet50", "Stalled", "True", namespace=namespace, timeout=30)
    ready = find_condition(md, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert ready["reason"] == replica_policy
    assert "at most 2 replicas per Deployment in this namespace" in ready["message"]
    assert "apply Deployment" in ready["message"]  # what the operator was doing
    # The count is the operator's own, over every namespace: wait until earlier tests' namespaces on
    # this cluster are gone (their objects, retried while the namespace terminates, apply too).
    wait_for(
        lambda: (
            not [
                ns
                for ns in kubectl.json("get", "namespaces", "-l", "kubeforge.io/e2e=true")["items"]
                if ns["status"].get("phase") == "Terminating"
            ]
        ),
        timeout=90,
        message="no other e2e namespace terminating",
    )
    applies = operator.api_calls()["apply"]
    time.sleep(6)
    assert operator.api_calls()["apply"] - applies <= 2  # a slow retry, not an error storm
    warnings = [e for e in _warnings(kubectl, namespace, "resnet50") if e["reason"] == replica_policy]
    assert len(warnings) == 1 and "at most 2 replicas" in warnings[0]["message"]

    kubectl("patch", "md", "resnet50", "--type=merge", "-p", '{"spec":{"replicas":2}}', namespace=namespace)
    md = wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    assert find_condition(md, "Stalled")["status"] == "False"  # type: ignore[index]


# -- 5. Available only with a ready replica --------------------------------------------------------


def test_not_available_while_no_replica_is_ready(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_md(namespace, gpu={"count": 16}))  # no node has 16 GPUs: 0 ready, ever
    md = wait_condition(kubectl, "md", "resnet50", "Degraded", "True", namespace=namespace, timeout=30)
    dep = kubectl.json("get", "deployment", "resnet50", namespace=namespace)
    dep_available = next(c for c in dep["status"]["conditions"] if c["type"] == "Available")
    assert dep_available["status"] == "True"  # maxUnavailable 1 of 1: the Deployment's own view
    available = find_condition(md, "Available")
    assert available is not None and (available["status"], available["reason"]) == ("False", "NoReplicaReady")


# -- 6. GitOps health that Flux's own library computes ----------------------------------------------


def test_kstatus_reads_every_status_scenario(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    def verdict(kind: str, name: str) -> str:
        return compute(kubectl.json("get", kind, name, namespace=namespace)).status

    def becomes(kind: str, name: str, expected: str, timeout: float = 60) -> None:
        wait_for(
            lambda: verdict(kind, name) == expected,
            timeout=timeout,
            message=f"kstatus {kind}/{name} {expected}",
        )

    kubectl.apply(_md(namespace, name="slow", gpu=None, podMetadata=_annotations(**{START_AFTER: "8s"})))
    kubectl.apply(_md(namespace, name="never", gpu={"count": 16}))
    kubectl.apply(_tj(namespace, name="runs"))
    kubectl.apply(
        _tj(namespace, name="fails", podMetadata=_annotations(**{EXIT_CODE: "1", EXIT_AFTER: "2s"}))
    )
    kubectl.apply(
        _tj(namespace, name="succeeds", podMetadata=_annotations(**{EXIT_CODE: "0", EXIT_AFTER: "2s"}))
    )
    kubectl.apply(_tj(namespace, name="pauses", runPolicy={"suspend": True}))

    wait_condition(kubectl, "md", "slow", "Reconciling", "True", namespace=namespace, timeout=30)
    assert verdict("md", "slow") == "InProgress"  # rolling out
    wait_condition(kubectl, "md", "never", "Degraded", "True", namespace=namespace, timeout=30)
    wait_condition(kubectl, "tj", "runs", "Running", "True", namespace=namespace, timeout=60)
    assert verdict("tj", "runs") == "InProgress"
    becomes("md", "slow", "Current")
    assert find_condition(kubectl.json("get", "md", "slow", namespace=namespace), "Ready")["status"] == "True"  # type: ignore[index]
    becomes("md", "never", "Failed", timeout=30)  # stalled: unschedulable past the bound (5 s here)
    becomes("tj", "fails", "Failed")
    becomes("tj", "succeeds", "Current")
    becomes("tj", "pauses", "InProgress")  # suspended: not done, not failed (Argo CD: Suspended)
    kubectl("patch", "md", "slow", "--type=merge", "-p", '{"spec":{"replicas":2}}', namespace=namespace)
    becomes("md", "slow", "InProgress", timeout=15)  # a new generation rolls out
    becomes("md", "slow", "Current")


# -- edits to a running TrainingJob ---------------------------------------------------------------


def test_an_edit_to_a_running_training_job_restarts_the_gang_with_it(
    kubectl: Kubectl, namespace: str, operator: Any
) -> None:
    kubectl.apply(_tj(namespace, name="train"))
    wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    kubectl(
        "patch",
        "tj",
        "train",
        "--type=merge",
        "-p",
        '{"spec":{"env":[{"name":"LR","value":"0.1"}]}}',
        namespace=namespace,
    )

    def attempt_one_running() -> dict[str, Any] | None:
        tj = kubectl.json("get", "tj", "train", namespace=namespace)
        return tj if tj["status"].get("attempt") == 1 and tj["status"]["phase"] == "Running" else None

    tj = wait_for(attempt_one_running, timeout=60, message="attempt 1 running")
    assert tj["status"]["restarts"] == 0  # an edit is not a failure
    job = kubectl.json("get", "job", "train-1", namespace=namespace)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LR"] == "0.1"
    assert kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0
    events = kubectl.json(
        "get", "events", "--field-selector", "involvedObject.name=train", namespace=namespace
    )
    assert any(e["reason"] == "SpecChanged" for e in events["items"])


# -- crash safety ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["attempt-committed", "attempt-deleted"])
def test_a_crash_between_two_api_calls_counts_the_restart_once_and_keeps_the_backoff(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, point: str
) -> None:
    """SIGKILL right after the next attempt was written to status (before the old Job is deleted), or
    right after the failed attempt's Job was deleted; the restarted operator carries on exactly."""
    backoff = 12
    own_operator.start(env={"KUBEFORGE_CRASH_AT": point})
    kubectl.apply(_tj(namespace, name="train", failurePolicy={"maxRestarts": 3, "backoffSeconds": backoff}))
    wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    selector = "batch.kubernetes.io/job-name=train-0,batch.kubernetes.io/job-completion-index=1"
    kubectl("annotate", "pods", "-l", selector, f"{EXIT_CODE}=137", "--overwrite", namespace=namespace)
    wait_for(
        lambda: own_operator.process.exit_code() is not None,
        timeout=60,
        message="the operator killed at the crash point",
    )
    assert f"crash point {point} reached" in own_operator.log_text()
    killed_at = time.monotonic()

    own_operator.start()
    tj = wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=90)
    started = time.monotonic()
    assert tj["status"]["attempt"] == 1
    assert tj["status"]["restarts"] == 1  # counted once, across the crash
    assert tj["status"]["lastFailure"]["exitCode"] == 137
    assert kubectl("get", "job", "train-0", namespace=namespace, check=False).returncode != 0
    assert kubectl("get", "job", "train-2", namespace=namespace, check=False).returncode != 0
    restart_after = tj["status"].get("restartAfter")
    job = kubectl.json("get", "job", "train-1", namespace=namespace)
    created = job["metadata"]["creationTimestamp"]
    # the backoff is honoured: attempt 1 was created no earlier than the failure + backoff
    failed = tj["status"]["lastFailure"]["time"]
    gap = _seconds(created) - _seconds(failed)
    assert gap >= backoff - 1, (failed, created, restart_after)
    assert started - killed_at >= 0  # ordering sanity: the new attempt started after the restart


@pytest.mark.parametrize(
    ("exit_code", "max_restarts", "reason"), [(1, 3, "PermanentFailure"), (137, 0, "RestartsExhausted")]
)
def test_a_crash_right_after_a_final_failure_is_committed_never_runs_the_job_again(
    kubectl: Kubectl,
    namespace: str,
    own_operator: OperatorProcess,
    exit_code: int,
    max_restarts: int,
    reason: str,
) -> None:
    """The failure is written to status (with a precondition) before the workers still running are
    stopped: SIGKILL between the two, and the restarted operator finishes the stop, runs nothing again."""
    own_operator.start(env={"KUBEFORGE_CRASH_AT": "failure-committed"})
    kubectl.apply(
        _tj(namespace, name="train", failurePolicy={"maxRestarts": max_restarts, "backoffSeconds": 1})
    )
    wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    uid = kubectl.json("get", "job", "train-0", namespace=namespace)["metadata"]["uid"]
    selector = "batch.kubernetes.io/job-name=train-0,batch.kubernetes.io/job-completion-index=1"
    kubectl(
        "annotate", "pods", "-l", selector, f"{EXIT_CODE}={exit_code}", "--overwrite", namespace=namespace
    )
    wait_for(
        lambda: own_operator.process.exit_code() is not None, timeout=60, message="killed at the crash point"
    )
    tj = kubectl.json("get", "tj", "train", namespace=namespace)
    assert tj["status"]["phase"] == "Failed"  # committed before the crash

    own_operator.start()
    tj = wait_condition(kubectl, "tj", "train", "Failed", "True", namespace=namespace, timeout=60)
    assert find_condition(tj, "Failed")["reason"] == reason  # type: ignore[index]
    assert (tj["status"]["attempt"], tj["status"]["restarts"]) == (0, 0)
    time.sleep(3)  # a few reconciles of the restarted operator
    jobs = kubectl.json("get", "jobs", namespace=namespace)["items"]
    assert [j["metadata"]["uid"] for j in jobs if j["metadata"]["name"].startswith("train-")] in ([], [uid])


def _seconds(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


# -- refusals made elsewhere, and a namespace going away -------------------------------------------

GPU_QUOTA = """
apiVersion: v1
kind: ResourceQuota
metadata: {name: gpus}
spec:
  hard: {requests.nvidia.com/gpu: "0"}
"""


def test_a_quota_refusing_the_pods_is_in_both_kinds_status_and_leaves_with_the_quota(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(GPU_QUOTA, namespace=namespace)
    kubectl.apply(_md(namespace, gpu={"count": 1}))
    kubectl.apply(_tj(namespace, name="train"))

    def refused(kind: str, name: str, condition: str, status: str) -> dict[str, Any] | None:
        obj = kubectl.json("get", kind, name, namespace=namespace)
        found = find_condition(obj, condition)
        ok = found and found["status"] == status and found["reason"] == "FailedCreate"
        return obj if ok and "exceeded quota: gpus" in found["message"] else None  # type: ignore[index]

    md = wait_for(lambda: refused("md", "resnet50", "Degraded", "True"), timeout=60, message="md refused")
    assert find_condition(md, "Ready")["reason"] == "FailedCreate"  # type: ignore[index]
    tj = wait_for(lambda: refused("tj", "train", "Stalled", "True"), timeout=60, message="tj refused")
    assert tj["status"]["phase"] == "Pending"
    warnings = {e["reason"] for e in _warnings(kubectl, namespace, "train")}
    assert "FailedCreate" in warnings

    kubectl("delete", "resourcequota", "gpus", namespace=namespace)
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=120)
    tj = wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=120)
    assert find_condition(tj, "Stalled")["status"] == "False"  # type: ignore[index]
    assert tj["status"]["restarts"] == 0


def test_deleting_the_namespace_of_a_running_job_is_neither_a_failure_nor_a_new_attempt(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess
) -> None:
    kubectl.apply(_tj(namespace, name="train"))
    wait_condition(kubectl, "tj", "train", "Running", "True", namespace=namespace, timeout=60)
    offset = operator.log_size()
    kubectl("delete", "namespace", namespace, "--wait=false")
    seen: list[tuple[Any, ...]] = []

    def gone() -> bool:
        result = kubectl("get", "tj", "train", "-o", "json", namespace=namespace, check=False)
        if result.returncode != 0:
            return True
        tj = json.loads(result.stdout)
        status = tj.get("status", {})
        phase = find_condition(tj, status.get("phase", "")) or {}
        seen.append((status.get("phase"), status.get("attempt"), status.get("restarts"), phase.get("reason")))
        return False

    wait_for(gone, timeout=120, message="the TrainingJob deleted with its namespace")
    wait_for(
        lambda: kubectl("get", "namespace", namespace, check=False).returncode != 0,
        timeout=120,
        message="the namespace deleted",
    )
    assert seen
    assert [s for s in seen if s[1:3] != (0, 0)] == []
    log = operator.log_text(offset)
    ours = [line for line in log.splitlines() if namespace in line and ("WARNING" in line or "ERROR" in line)]
    assert not ours, ours
