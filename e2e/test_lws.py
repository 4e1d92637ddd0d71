"""Multi-node replicas with the real LeaderWorkerSet controller: groups of 2 pods x 8 H100.

First a smoke test of the controller and its webhooks themselves (e2e/lws.py): what it writes
(labels, LWS_* env, the headless Service, status) is what the operator builds on. Then
ModelDeployments whose replicas span two nodes (examples/llm-multinode.yaml): placement, a failed
worker, scale, rollout, the switch to and from one node, and a cluster without LWS.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import Kubectl, find_condition, wait_condition, wait_for
from e2e.lws import CRD, LWS_API, LeaderWorkerSetController
from e2e.nodes import GPU_TOLERATION, H100_80GB
from e2e.storage import volume_for_claim
from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.cache import cache_claim_name

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"


def _leaderworkerset(name: str) -> dict[str, Any]:
    pod = {
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": H100_80GB},
            "tolerations": [GPU_TOLERATION],
            "containers": [
                {
                    "name": "engine",
                    "image": "registry.invalid/engine:1",
                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                }
            ],
        }
    }
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": pod,
            },
        },
    }


def test_a_group_of_two_8_gpu_pods_lands_on_two_h100_nodes_and_is_ready(
    kubectl: Kubectl, namespace: str, lws: LeaderWorkerSetController
) -> None:
    kubectl.apply(json.dumps(_leaderworkerset("smoke")), namespace=namespace)

    def group_ready() -> list[dict[str, Any]] | None:
        pods = kubectl.json("get", "pods", "-l", f"{NAME_LABEL}=smoke", namespace=namespace)["items"]
        ready = [p for p in pods if (find_condition(p, "Ready") or {}).get("status") == "True"]
        return pods if len(pods) == 2 and len(ready) == 2 else None

    pods = wait_for(group_ready, timeout=90, message="the leader and its worker Ready")
    by_index = {p["metadata"]["labels"][WORKER_INDEX]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]  # the pod webhook labelled them
    assert {p["metadata"]["labels"][GROUP_INDEX] for p in pods} == {"0"}
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert len(set(nodes)) == 2, nodes
    for node in nodes:
        labels = kubectl.json("get", "node", node)["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == H100_80GB

    env = {e["name"]: e.get("value") for e in by_index["1"]["spec"]["containers"][0].get("env", [])}
    # <leader pod>.<LeaderWorkerSet> (its headless Service).<namespace>
    assert env["LWS_LEADER_ADDRESS"] == f"{by_index['0']['metadata']['name']}.smoke.{namespace}"
    assert env["LWS_GROUP_SIZE"] == "2" and env["LWS_WORKER_INDEX"] == "1"
    service = kubectl.json("get", "service", "smoke", namespace=namespace)
    assert service["spec"]["clusterIP"] == "None"  # LWS's own headless Service for the group

    def lws_ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.json("get", "leaderworkerset", "smoke", namespace=namespace)
        status = obj.get("status") or {}
        available = find_condition(obj, "Available") or {}
        return obj if status.get("readyReplicas") == 1 and available.get("status") == "True" else None

    obj = wait_for(lws_ready, timeout=60, message="LeaderWorkerSet readyReplicas 1 and Available")
    # what the webhook defaulted
    assert obj["spec"]["rolloutStrategy"]["type"] == "RollingUpdate"
    assert obj["spec"]["networkConfig"]["subdomainPolicy"] == "Shared"
    assert obj["status"]["replicas"] == 1


# -- ModelDeployments whose replicas span nodes ------------------------------------------------------

MD = "llama-405b"
LWS = f"{MD}-lws"
REVISION = "leaderworkerset.sigs.k8s.io/template-revision-hash"
GROUP_KEY = "leaderworkerset.sigs.k8s.io/group-key"
HOLD = "e2e.kubeforge.io/hold"
FILL_POD = "app.kubernetes.io/component=model-cache"


def _multinode(namespace: str, **spec: Any) -> str:
    doc = yaml.safe_load((EXAMPLES / "llm-multinode.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].update(spec)
    return json.dumps(doc)


def _md_pods(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    selector = f"kubeforge.io/owner-name={MD},kubeforge.io/owner-kind=modeldeployment"
    items: list[dict[str, Any]] = kubectl.json("get", "pods", "-l", selector, namespace=namespace)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _groups(pods: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        groups[pod["metadata"]["labels"][GROUP_INDEX]].append(pod)
    return dict(groups)


def _ready(pod: dict[str, Any]) -> bool:
    return (find_condition(pod, "Ready") or {}).get("status") == "True"


def _md_ready(kubectl: Kubectl, namespace: str, timeout: float = 90) -> dict[str, Any]:
    """The ModelDeployment once Ready for its current generation."""

    def ready() -> dict[str, Any] | None:
        md: dict[str, Any] = kubectl.json("get", "md", MD, namespace=namespace)
        condition = find_condition(md, "Ready") or {}
        current = condition.get("observedGeneration") == md["metadata"]["generation"]
        return md if current and condition.get("status") == "True" else None

    return wait_for(ready, timeout=timeout, message=f"md/{MD} Ready")


def _events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kubectl.json(
        "get", "events", "--field-selector", f"involvedObject.name={name}", namespace=namespace
    )["items"]
    return items


def test_a_two_node_replica_is_one_group_on_two_h100_nodes(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    kubectl.apply(_multinode(namespace))
    md = _md_ready(kubectl, namespace)
    assert (md["status"]["replicas"], md["status"]["ready"]) == (1, "1/1")
    scale = json.loads(
        kubectl(
            "get", "--raw", f"/apis/kubeforge.io/v1alpha1/namespaces/{namespace}/modeldeployments/{MD}/scale"
        ).stdout
    )
    # /scale (what the HPA reads) counts groups, and its selector finds one pod per group: the leader
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (1, 1)
    assert scale["status"]["selector"].endswith(f",{WORKER_INDEX}=0")

    lws_obj = kubectl.json("get", "leaderworkerset", LWS, namespace=namespace)
    assert lws_obj["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert lws_obj["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert kubectl("get", "deployment", MD, namespace=namespace, check=False).returncode != 0

    pods = _md_pods(kubectl, namespace)
    assert len(pods) == 2 and all(_ready(p) for p in pods)
    assert set(_groups(pods)) == {"0"}
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2
    for node in nodes:
        assert kubectl.json("get", "node", node)["metadata"]["labels"]["nvidia.com/gpu.product"] == H100_80GB
    by_index = {p["metadata"]["labels"][WORKER_INDEX]: p for p in pods}
    assert by_index["0"]["spec"]["containers"][0]["name"] == "triton"
    assert by_index["1"]["spec"]["containers"][0]["name"] == "engine-worker"
    worker_env = {e["name"]: e.get("value") for e in by_index["1"]["spec"]["containers"][0]["env"]}
    assert worker_env["LWS_LEADER_ADDRESS"] == f"{by_index['0']['metadata']['name']}.{LWS}.{namespace}"
    # the API server merged matchLabelKeys: this group's pods repel each other, other groups' do not
    term = by_index["1"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ][0]
    group_key = by_index["1"]["metadata"]["labels"][GROUP_KEY]
    assert {"key": GROUP_KEY, "operator": "In", "values": [group_key]} in term["labelSelector"][
        "matchExpressions"
    ]

    service = kubectl.json("get", "service", MD, namespace=namespace)
    assert service["spec"]["selector"][WORKER_INDEX] == "0"  # requests go to Triton on the leaders
    headless = kubectl.json("get", "service", LWS, namespace=namespace)  # LWS's own, for Ray
    assert headless["spec"]["clusterIP"] == "None"


def test_a_failed_worker_recreates_the_whole_group_and_the_md_says_so(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    kubectl.apply(_multinode(namespace))
    _md_ready(kubectl, namespace)
    before = {
        p["metadata"]["labels"][WORKER_INDEX]: p["metadata"]["uid"] for p in _md_pods(kubectl, namespace)
    }
    worker = next(p for p in _md_pods(kubectl, namespace) if p["metadata"]["labels"][WORKER_INDEX] == "1")
    name = worker["metadata"]["name"]
    # a finalizer of the test's holds the failed worker while it is deleted, so the recreation lasts
    # until the test has seen the ModelDeployment report it (kwok recreates a group in about a second)
    kubectl("patch", "pod", name, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [HOLD]}}),
            namespace=namespace)  # fmt: skip
    # the Ray worker exits: its container restarts in place, and LWS recreates the whole group
    kubectl("annotate", "pod", name, "sim.kubeforge.io/exit-code=1", namespace=namespace)

    def recreating() -> dict[str, Any] | None:
        ready = find_condition(kubectl.json("get", "md", MD, namespace=namespace), "Ready") or {}
        return ready if ready.get("reason") == "GroupRecreating" else None

    ready = wait_for(recreating, timeout=60, message="Ready False with reason GroupRecreating")
    assert ready["status"] == "False"
    # the worker's restart, or (once kwok has stopped it) its deletion
    assert ready["message"].startswith(f"group 0 is being recreated: pod {name}"), ready["message"]
    progressing = find_condition(kubectl.json("get", "md", MD, namespace=namespace), "Progressing") or {}
    assert (progressing["status"], progressing["reason"]) == ("True", "GroupRecreating")
    kubectl("patch", "pod", name, "--type=json", "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]',
            namespace=namespace)  # fmt: skip
    md = _md_ready(kubectl, namespace)
    after = {
        p["metadata"]["labels"][WORKER_INDEX]: p["metadata"]["uid"] for p in _md_pods(kubectl, namespace)
    }
    assert after.keys() == {"0", "1"}
    assert not set(after.values()) & set(before.values())  # the leader too: the whole group is new
    event = next(e for e in _events(kubectl, namespace, MD) if e["reason"] == "GroupRecreating")
    assert event["type"] == "Warning" and "group 0 is being recreated" in event["message"]
    assert md["status"]["ready"] == "1/1"


def test_scale_adds_a_group_and_a_change_rolls_whole_groups(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    kubectl.apply(_multinode(namespace))
    _md_ready(kubectl, namespace)
    kubectl("scale", "modeldeployment", MD, "--replicas=2", namespace=namespace)
    md = _md_ready(kubectl, namespace)
    assert (md["status"]["replicas"], md["status"]["ready"]) == (2, "2/2")
    assert kubectl.json("get", "leaderworkerset", LWS, namespace=namespace)["spec"]["replicas"] == 2
    pods = _md_pods(kubectl, namespace)
    assert {g: len(members) for g, members in _groups(pods).items()} == {"0": 2, "1": 2}
    assert len({p["spec"]["nodeName"] for p in pods}) == 4  # all four H100 nodes
    old = {p["metadata"]["labels"][REVISION] for p in pods}
    assert len(old) == 1

    doc = json.loads(
        _multinode(namespace, replicas=2, runtime={"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]})
    )
    kubectl.apply(json.dumps(doc))
    mixed: list[str] = []

    def rolled() -> dict[str, Any] | None:
        # A pod whose StatefulSet is gone is not part of a group any more: the garbage collector
        # deletes it, a moment later on a loaded machine (seen with e2e files run side by side).
        # The pods are read first, so a StatefulSet deleted between the two reads drops its pods rather
        # than leaving them in (seen once under load: an old worker beside its group's new leader).
        listed = _md_pods(kubectl, namespace)
        live = {
            s["metadata"]["uid"] for s in kubectl.json("get", "statefulsets", namespace=namespace)["items"]
        }
        pods = [
            p
            for p in listed
            if any(o["uid"] in live for o in p["metadata"].get("ownerReferences") or [])
            and not p["metadata"].get("deletionTimestamp")  # terminating: out of the Service already
        ]
        for index, members in _groups(pods).items():
            # a group serving (all its pods Ready) never mixes leader and worker revisions
            if len(members) == 2 and all(_ready(p) for p in members):
                revisions = {p["metadata"]["labels"][REVISION] for p in members}
                if len(revisions) > 1:
                    mixed.append(f"group {index}: {revisions}")
        md = kubectl.json("get", "md", MD, namespace=namespace)
        ready = find_condition(md, "Ready") or {}
        done = (
            ready.get("status") == "True" and ready.get("observedGeneration") == md["metadata"]["generation"]
        )
        return md if done else None

    rolled_md = wait_for(rolled, timeout=120, interval=0.2, message="the rollout of both groups")
    assert not mixed, mixed
    pods = _md_pods(kubectl, namespace)
    assert {g: len(members) for g, members in _groups(pods).items()} == {"0": 2, "1": 2}
    new = {p["metadata"]["labels"][REVISION] for p in pods}
    assert len(new) == 1 and not new & old  # every pod of both groups on the new templates
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["NCCL_DEBUG"] == "INFO"
    assert rolled_md["status"]["ready"] == "2/2"

    # a third group finds no two free H100 nodes: Degraded, in the scheduler's words
    kubectl("scale", "modeldeployment", MD, "--replicas=3", namespace=namespace)
    md = wait_condition(kubectl, "md", MD, "Degraded", namespace=namespace, timeout=60)
    degraded = find_condition(md, "Degraded") or {}
    assert degraded["reason"] == "Unschedulable"
    assert f"pod {LWS}-2" in degraded["message"] and "nvidia.com/gpu" in degraded["message"]
    assert md["status"]["ready"] == "2/3"


def test_zero_groups_and_back_through_scale_as_an_autoscaler_drives_it(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    """KEDA scales a ModelDeployment to zero and back through its /scale; for a multi-node one that
    is groups: zero leaves no pod holding a GPU, one brings a whole group back."""
    kubectl.apply(_multinode(namespace))
    _md_ready(kubectl, namespace)
    kubectl("scale", "modeldeployment", MD, "--replicas=0", namespace=namespace)
    wait_for(lambda: not _md_pods(kubectl, namespace), timeout=60, message="no pod of any group")
    assert kubectl.json("get", "leaderworkerset", LWS, namespace=namespace)["spec"]["replicas"] == 0
    md = wait_for(
        lambda: (
            (m := kubectl.json("get", "md", MD, namespace=namespace))["status"].get("replicas") == 0 and m
        ),
        timeout=30,
        message="status.replicas 0",
    )
    assert md["status"]["ready"] == "0/0"
    kubectl("scale", "modeldeployment", MD, "--replicas=1", namespace=namespace)
    md = _md_ready(kubectl, namespace)
    assert md["status"]["ready"] == "1/1"
    assert {g: len(members) for g, members in _groups(_md_pods(kubectl, namespace)).items()} == {"0": 2}


def test_switching_between_one_and_two_nodes_swaps_deployment_and_leaderworkerset(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    kubectl.apply(_multinode(namespace))
    _md_ready(kubectl, namespace)
    doc = json.loads(_multinode(namespace))
    doc["spec"]["models"][0]["llm"].pop("pipelineParallelSize")  # tensor parallel 8: one node
    kubectl.apply(json.dumps(doc))
    md = _md_ready(kubectl, namespace)
    assert md["status"]["selector"] == f"kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name={MD}"
    wait_for(
        lambda: kubectl("get", "leaderworkerset", LWS, namespace=namespace, check=False).returncode != 0,
        timeout=30,
        message="the LeaderWorkerSet gone",
    )
    assert kubectl.json("get", "deployment", MD, namespace=namespace)["status"]["readyReplicas"] == 1
    assert WORKER_INDEX not in kubectl.json("get", "service", MD, namespace=namespace)["spec"]["selector"]

    kubectl.apply(_multinode(namespace))  # back to 2 nodes
    md = _md_ready(kubectl, namespace)
    wait_for(
        lambda: kubectl("get", "deployment", MD, namespace=namespace, check=False).returncode != 0,
        timeout=30,
        message="the Deployment gone",
    )
    assert kubectl.json("get", "leaderworkerset", LWS, namespace=namespace)["spec"]["replicas"] == 1
    assert {len(m) for m in _groups(_md_pods(kubectl, namespace)).values()} == {2}


def test_with_a_model_cache_the_groups_start_once_it_is_filled(
    kubectl: Kubectl, namespace: str, operator: Any, lws: LeaderWorkerSetController, models_claim: str
) -> None:
    """The model cache gates the LeaderWorkerSet as it gates a Deployment, and every pod of a group
    (the workers load their shards too) mounts the filled cache."""
    doc = json.loads(_multinode(namespace, cache={"size": "100Gi"}))
    md_model = ModelDeployment.model_validate({**doc, "metadata": {**doc["metadata"], "uid": "x"}})
    claim = cache_claim_name(md_model)
    assert claim is not None
    volume_for_claim(kubectl, namespace, claim, size="100Gi")
    kubectl.apply(json.dumps(doc))

    def filling() -> list[dict[str, Any]] | None:
        md = kubectl.json("get", "md", MD, namespace=namespace)
        progressing = find_condition(md, "Progressing") or {}
        pods = kubectl.json("get", "pods", "-l", FILL_POD, namespace=namespace)["items"]
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return running if progressing.get("reason") == "CacheFilling" and running else None

    (fill,) = wait_for(
        filling, timeout=60, message="the cache fill running, the ModelDeployment CacheFilling"
    )
    assert kubectl("get", "leaderworkerset", LWS, namespace=namespace, check=False).returncode != 0
    # kwok runs no containers: the fill pod ends as a successful fill would
    kubectl("annotate", "pod", fill["metadata"]["name"], "sim.kubeforge.io/exit-code=0", namespace=namespace)
    md = _md_ready(kubectl, namespace)
    assert md["status"]["cache"]["state"] == "Ready"
    pods = _md_pods(kubectl, namespace)
    assert len(pods) == 2
    for pod in pods:
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claim in claims, (pod["metadata"]["name"], claims)


@pytest.fixture
def without_lws(kubectl: Kubectl, lws: LeaderWorkerSetController) -> Iterator[LeaderWorkerSetController]:
    """The LeaderWorkerSet API gone for one test: the session's controller stopped and its CRD deleted
    (with any LeaderWorkerSets, none of which another test still uses: tests run one at a time);
    both back afterwards."""
    lws.stop()
    kubectl("delete", "crd", CRD, "--ignore-not-found", "--wait=true", timeout=120)
    try:
        yield lws
    finally:
        if not lws.processes["lws"].is_running():
            lws.start()


def test_without_the_leaderworkerset_api_the_md_says_so_and_recovers_once_installed(
    kubectl: Kubectl, namespace: str, operator: Any, without_lws: LeaderWorkerSetController, models_claim: str
) -> None:
    kubectl.apply(_multinode(namespace))
    md = wait_condition(kubectl, "md", MD, "Stalled", "True", namespace=namespace, timeout=60)
    ready = find_condition(md, "Ready") or {}
    assert (ready["status"], ready["reason"]) == ("False", "LeaderWorkerSetNotInstalled")
    assert "leaderworkerset.x-k8s.io/v1 API is not served" in ready["message"]
    assert md["status"]["phase"] == "Failed"
    wait_for(
        lambda: [e for e in _events(kubectl, namespace, MD) if e["reason"] == "LeaderWorkerSetNotInstalled"],
        timeout=30,
        message="a LeaderWorkerSetNotInstalled Event",
    )

    without_lws.start()  # installed later: the ModelDeployment gets there without a change
    md = _md_ready(kubectl, namespace, timeout=120)
    assert md["status"]["ready"] == "1/1"
