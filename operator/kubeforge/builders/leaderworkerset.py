"""A ModelDeployment replica that spans several nodes: one LeaderWorkerSet group per replica.

The group's pods form one vLLM engine over Ray, the way vLLM documents multi-node serving
(docs.vllm.ai, "Distributed inference and serving"; its examples/online_serving/multi-node-serving.sh,
which LWS's own vLLM example runs): the leader starts the Ray head, waits until every node's GPUs
have joined, then starts tritonserver, whose vLLM backend builds the engine with
`distributed_executor_backend: ray` and places the workers of its tensor x pipeline parallel plan
on the cluster's GPUs; each worker pod only runs `ray start --address=<leader>:6379 --block`.
docs/llm-multinode.md has the sources.

The pod templates are the Deployment's (builders/modeldeployment.py): the same GPUs, placement,
volumes and model-repository init container on every pod, so the workers find the weights at the
same path as the leader.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.meta import Object
from kubeforge.builders.modeldeployment import (
    build_service,
    build_triton_deployment,
    rollout_strategy,
    selector,
)
from kubeforge.builders.pods import HOSTNAME_TOPOLOGY
from kubeforge.settings import Settings

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"
# labels the LWS pod webhook puts on every pod of a group (sigs.k8s.io/lws api/leaderworkerset/v1)
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
LEADER_INDEX = "0"
# which revision of our templates a pod runs: LWS's own revision hash is not known before it
# computes it, so status compares the pods with this one (status/leaderworkerset.py)
TEMPLATE_HASH_ANNOTATION = "kubeforge.io/template-hash"
# the name suffix: LWS names its headless Service after the LeaderWorkerSet, and the ModelDeployment's
# own Service already has the ModelDeployment's name
NAME_SUFFIX = "-lws"
# LWS names a group's worker StatefulSet <LeaderWorkerSet>-<group>, and the StatefulSet controller
# labels its pods controller-revision-hash=<StatefulSet>-<hash of up to 10 characters>: a label
# value of at most 63 characters. With up to 100 groups the ModelDeployment's name fits in:
MAX_MULTI_NODE_NAME_LENGTH = 63 - 10 - len("-99-") - len(NAME_SUFFIX)
RAY_PORT = 6379
WORKER_CONTAINER = "engine-worker"

# Ray's client server (10001) runs any driver that connects to it, with no authentication; vLLM does
# not use it (its engine joins through the GCS), and `ray start --head` cannot leave it out where
# ray[client] is installed (it defaults the port to 10001 and refuses one below 1024): stopped here
# (the pattern's brackets keep it from matching this script's own command line, or grep's)
RAY_CLIENT_SERVER_PATTERN = "ray[.]util[.]client[.]server"
STOP_RAY_CLIENT_SERVER = f"""for p in /proc/[0-9]*; do
  if grep -qa '{RAY_CLIENT_SERVER_PATTERN}' "$p/cmdline" 2>/dev/null; then kill "${{p#/proc/}}" 2>/dev/null || true; fi
done"""

# The leader: the Ray head, then tritonserver once the whole group's GPUs are in the Ray cluster
# (vLLM places its workers when the engine starts; a GPU that joins later is not used). `$0 "$@"`
# is tritonserver with its arguments (the container's args), so they stay readable in the spec.
LEADER_SCRIPT = f"""set -eu
ray start --head --port={RAY_PORT} --node-ip-address="$POD_IP" --include-dashboard=false --disable-usage-stats
{STOP_RAY_CLIENT_SERVER}
deadline=$(( $(date +%s) + KUBEFORGE_ENGINE_WAIT_SECONDS ))
gpus() {{ python3 -c 'import ray; ray.init(address="auto", logging_level="ERROR"); print(int(ray.cluster_resources().get("GPU", 0)))'; }}
until [ "$(gpus)" -ge "$KUBEFORGE_ENGINE_GPUS" ]; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "only $(gpus) of $KUBEFORGE_ENGINE_GPUS GPUs joined the Ray cluster in time" >&2
    exit 1
  fi
  sleep 5
done
exec "$0" "$@"
"""

# A worker: join the leader's Ray cluster (retrying while the head starts) and stay there. When it
# leaves (the head is gone), the container ends, and LWS recreates the whole group.
WORKER_SCRIPT = f"""set -u
deadline=$(( $(date +%s) + KUBEFORGE_ENGINE_WAIT_SECONDS ))
until ray start --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" --node-ip-address="$POD_IP" --disable-usage-stats --block; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "the Ray head at $LWS_LEADER_ADDRESS:{RAY_PORT} did not answer in time" >&2
    exit 1
  fi
  sleep 5
done
"""


def leaderworkerset_name(md: ModelDeployment) -> str:
    return md.metadata.name + NAME_SUFFIX


def leader_selector() -> dict[str, str]:
    """What selects the leaders (Triton) among a group's pods."""
    return {WORKER_INDEX_LABEL: LEADER_INDEX}


def leader_selector_string(md: ModelDeployment) -> str:
    """status.selector (read by /scale and the HPA) of a multi-node ModelDeployment: its leaders,
    which run Triton and serve its metrics, one per replica."""
    return ",".join(f"{k}={v}" for k, v in sorted({**selector(md), **leader_selector()}.items()))


def _engine_env(md: ModelDeployment) -> list[dict[str, Any]]:
    """Env of every pod of a group: its own IP for Ray and vLLM (VLLM_HOST_IP, as vLLM's multi-node
    docs ask), and how many GPUs the engine waits for and how long."""
    assert md.spec.gpu is not None, "a multi-node replica has GPUs (API rule)"
    runtime = md.spec.runtime
    wait = runtime.startup_timeout_seconds if runtime else 1800
    return [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "VLLM_HOST_IP", "value": "$(POD_IP)"},
        {"name": "KUBEFORGE_ENGINE_GPUS", "value": str(md.spec.gpu.resource_count * md.spec.replica_nodes)},
        {"name": "KUBEFORGE_ENGINE_WAIT_SECONDS", "value": str(wait)},
    ]


def _distinct_nodes(pod_spec: dict[str, Any], owner_selector: dict[str, str]) -> None:
    """Keep the pods of one group on distinct nodes (a replica of N nodes is N nodes' GPUs).

    `matchLabelKeys` (GA in Kubernetes 1.33) adds the incoming pod's own group-key value to the
    selector when the pod is created, after LWS's webhook has set that label: pods of the same group
    repel each other, other groups' pods do not. LWS's exclusive-topology annotation is the opposite
    (one topology domain per group: the whole group on one node for kubernetes.io/hostname).
    """
    term = {
        "labelSelector": {"matchLabels": dict(owner_selector)},
        "matchLabelKeys": [GROUP_KEY_LABEL],
        "topologyKey": HOSTNAME_TOPOLOGY,
    }
    affinity = dict(pod_spec.get("affinity") or {})
    anti = dict(affinity.get("podAntiAffinity") or {})
    anti["requiredDuringSchedulingIgnoredDuringExecution"] = [
        *anti.get("requiredDuringSchedulingIgnoredDuringExecution", []),
        term,
    ]
    affinity["podAntiAffinity"] = anti
    pod_spec["affinity"] = affinity


def _leader_template(md: ModelDeployment, template: dict[str, Any]) -> dict[str, Any]:
    leader = copy.deepcopy(template)
    triton = leader["spec"]["containers"][0]
    triton["command"] = ["/bin/sh", "-c", LEADER_SCRIPT, *triton["command"]]
    triton["ports"] = [*triton["ports"], {"name": "ray", "containerPort": RAY_PORT, "protocol": "TCP"}]
    triton["env"] = [*_engine_env(md), *triton.get("env", [])]
    return leader


def _worker_template(md: ModelDeployment, template: dict[str, Any]) -> dict[str, Any]:
    """The leader's pod without Triton: its GPUs, mounts and env, running a Ray worker node."""
    worker = copy.deepcopy(template)
    triton = worker["spec"]["containers"][0]
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": triton["image"],
        "command": ["/bin/sh", "-c", WORKER_SCRIPT],
        "env": [*_engine_env(md), *triton.get("env", [])],
        "volumeMounts": triton["volumeMounts"],
        "securityContext": triton["securityContext"],
    }
    if "resources" in triton:
        container["resources"] = triton["resources"]
    worker["spec"]["containers"] = [container]
    # Triton's scrape annotations stay on the leader: a worker serves no metrics
    annotations = md.spec.pod_metadata.annotations if md.spec.pod_metadata else None
    worker["metadata"]["annotations"] = dict(annotations or {})
    return worker


def _template_hash(leader: dict[str, Any], worker: dict[str, Any]) -> str:
    canonical = json.dumps([leader, worker], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def build_leaderworkerset(md: ModelDeployment, settings: Settings) -> Object:
    """The LeaderWorkerSet of a multi-node ModelDeployment: spec.replicas groups of replica_nodes pods.

    - `RecreateGroupOnPodRestart`: a vLLM engine does not survive losing one of its nodes, so a
      restart of any pod's container (or its deletion) recreates the whole group.
    - `startupPolicy: LeaderCreated`: the workers start with the leader, not after it is Ready (the
      leader is Ready only once the workers have joined).
    - A rolling update replaces whole groups (leader and workers together, never mixed revisions),
      with the Deployment's surge and unavailability (with GPUs: no surge, one group at a time).
    """
    deployment = build_triton_deployment(md, settings)
    template = deployment["spec"]["template"]
    owner_selector = deployment["spec"]["selector"]["matchLabels"]
    _distinct_nodes(template["spec"], owner_selector)
    leader = _leader_template(md, template)
    worker = _worker_template(md, template)
    digest = _template_hash(leader, worker)
    for pod in (leader, worker):
        pod["metadata"]["annotations"] = {
            **pod["metadata"].get("annotations", {}),
            TEMPLATE_HASH_ANNOTATION: digest,
        }
    rolling = rollout_strategy(md)["rollingUpdate"]
    meta = copy.deepcopy(deployment["metadata"])
    meta["name"] = leaderworkerset_name(md)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "replicas": md.spec.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": md.spec.replica_nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": leader,
                "workerTemplate": worker,
            },
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {
                    "maxUnavailable": rolling["maxUnavailable"],
                    "maxSurge": rolling["maxSurge"],
                },
            },
        },
    }


def build_leader_service(md: ModelDeployment) -> Object:
    """The ModelDeployment's Service, selecting only the groups' leaders: Triton runs there.

    The engine's own traffic (Ray, NCCL) goes pod to pod through the headless Service that LWS
    creates for each LeaderWorkerSet (named after it; LWS_LEADER_ADDRESS resolves through it).
    """
    service = build_service(md)
    service["spec"]["selector"] = {**service["spec"]["selector"], **leader_selector()}
    return service


def template_hash(lws: dict[str, Any]) -> str | None:
    """The template hash a live LeaderWorkerSet was applied with (what up-to-date pods carry)."""
    leader = lws.get("spec", {}).get("leaderWorkerTemplate", {}).get("leaderTemplate") or {}
    value = (leader.get("metadata", {}).get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)
    return str(value) if value is not None else None
