"""Spec in, LeaderWorkerSet (one group of nodes per replica) and leader Service out."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.builders.leaderworkerset import (
    GROUP_KEY_LABEL,
    LEADER_SCRIPT,
    MAX_MULTI_NODE_NAME_LENGTH,
    TEMPLATE_HASH_ANNOTATION,
    WORKER_SCRIPT,
    build_leader_service,
    build_leaderworkerset,
    leader_selector_string,
    template_hash,
)
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings
from tests.data.invalid_specs import example

OWNER = {"kubeforge.io/owner-kind": "modeldeployment", "kubeforge.io/owner-name": "llama-405b"}


def _md(**spec: Any) -> ModelDeployment:
    doc = copy.deepcopy(example("llm-multinode.yaml"))
    doc["metadata"].update(uid="0000-uid", generation=2, namespace="team-a")
    doc["spec"].update(spec)
    return ModelDeployment.model_validate(doc)


@pytest.fixture
def md() -> ModelDeployment:
    return _md()


def _templates(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    lwt = lws["spec"]["leaderWorkerTemplate"]
    return lwt["leaderTemplate"], lwt["workerTemplate"]


def test_one_group_of_nodes_per_replica(md: ModelDeployment, settings: Settings) -> None:
    lws = build_leaderworkerset(_md(replicas=3), settings)
    assert (lws["apiVersion"], lws["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    # LWS names its headless Service after the LeaderWorkerSet; the ModelDeployment's name is its own Service's
    assert lws["metadata"]["name"] == "llama-405b-lws"
    assert lws["metadata"]["namespace"] == "team-a"
    assert lws["metadata"]["ownerReferences"][0]["uid"] == "0000-uid"
    assert OWNER.items() <= lws["metadata"]["labels"].items()
    spec = lws["spec"]
    assert spec["replicas"] == 3  # groups
    assert spec["leaderWorkerTemplate"]["size"] == 2  # tensor 8 x pipeline 2 over 8 GPUs a node
    assert spec["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert spec["startupPolicy"] == "LeaderCreated"  # the leader is Ready only once the workers joined


@pytest.mark.parametrize(
    ("rollout", "expected"),
    [
        (None, {"maxUnavailable": 1, "maxSurge": 0}),  # GPUs: no surge group waiting for GPUs forever
        ({"maxSurge": 1, "maxUnavailable": 0}, {"maxUnavailable": 0, "maxSurge": 1}),
    ],
)
def test_rolling_update_replaces_whole_groups_like_the_deployment(
    settings: Settings, rollout: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    md = _md(rollout=rollout) if rollout else _md()
    strategy = build_leaderworkerset(md, settings)["spec"]["rolloutStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdateConfiguration": expected}


def test_explicit_nodes_per_replica_sets_the_group_size(settings: Settings) -> None:
    doc = copy.deepcopy(example("llm-multinode.yaml"))
    doc["metadata"].update(uid="u", namespace="ns")
    doc["spec"]["nodesPerReplica"] = 4
    doc["spec"]["models"][0]["llm"] = {"tensorParallelSize": 8, "pipelineParallelSize": 4}
    lws = build_leaderworkerset(ModelDeployment.model_validate(doc), settings)
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    leader, _ = _templates(lws)
    env = {e["name"]: e.get("value") for e in leader["spec"]["containers"][0]["env"]}
    assert env["KUBEFORGE_ENGINE_GPUS"] == "32"


def test_leader_runs_the_ray_head_then_triton_with_the_deployments_arguments(
    md: ModelDeployment, settings: Settings
) -> None:
    deployment_triton = build_triton_deployment(md, settings)["spec"]["template"]["spec"]["containers"][0]
    leader, _ = _templates(build_leaderworkerset(md, settings))
    triton = leader["spec"]["containers"][0]
    # the Ray head first, then the Deployment's own command (Triton with its restricted APIs)
    assert triton["command"] == ["/bin/sh", "-c", LEADER_SCRIPT, *deployment_triton["command"]]
    assert deployment_triton["command"][-1] == "tritonserver"
    assert triton["args"] == deployment_triton["args"]
    for key in ("image", "resources", "volumeMounts", "startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[key] == deployment_triton[key], key
    assert {"name": "ray", "containerPort": 6379, "protocol": "TCP"} in triton["ports"]
    env = {e["name"]: e for e in triton["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["VLLM_HOST_IP"]["value"] == "$(POD_IP)"
    assert env["KUBEFORGE_ENGINE_GPUS"]["value"] == "16"
    assert env["KUBEFORGE_ENGINE_WAIT_SECONDS"]["value"] == "1800"  # the startup timeout
    assert leader["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_worker_has_the_leaders_gpus_mounts_and_init_but_runs_a_ray_worker(
    md: ModelDeployment, settings: Settings
) -> None:
    leader, worker = _templates(build_leaderworkerset(md, settings))
    (container,) = worker["spec"]["containers"]
    triton = leader["spec"]["containers"][0]
    assert container["name"] == "engine-worker"
    assert container["command"] == ["/bin/sh", "-c", WORKER_SCRIPT]
    assert "args" not in container and "ports" not in container
    assert not {"startupProbe", "readinessProbe", "livenessProbe"} & container.keys()
    for key in ("image", "resources", "volumeMounts", "securityContext", "env"):
        assert container[key] == triton[key], key
    # the workers load their shards of the weights from the same path as the leader
    for key in ("initContainers", "volumes", "tolerations", "affinity", "securityContext"):
        assert worker["spec"][key] == leader["spec"][key], key
    assert worker["metadata"]["labels"] == leader["metadata"]["labels"]
    assert "prometheus.io/scrape" not in worker["metadata"]["annotations"]  # no Triton there


def test_every_pod_gets_the_deployments_placement_and_a_node_of_its_own(
    settings: Settings,
) -> None:
    user_anti = {
        "labelSelector": {"matchLabels": {"team": "x"}},
        "topologyKey": "topology.kubernetes.io/zone",
    }
    md = _md(
        placement={
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [user_anti]}}
        }
    )
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    leader, worker = _templates(build_leaderworkerset(md, settings))
    for template in (leader, worker):
        spec = template["spec"]
        assert spec["tolerations"] == pod["tolerations"]
        assert spec["affinity"]["nodeAffinity"] == pod["affinity"]["nodeAffinity"]  # the GPU product
        terms = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms == [
            user_anti,
            {
                "labelSelector": {"matchLabels": OWNER},
                # the API server adds `group-key In (<this pod's group>)`: only the own group repels
                "matchLabelKeys": [GROUP_KEY_LABEL],
                "topologyKey": "kubernetes.io/hostname",
            },
        ]


def test_the_template_hash_follows_the_templates_not_the_replicas(
    md: ModelDeployment, settings: Settings
) -> None:
    lws = build_leaderworkerset(md, settings)
    leader, worker = _templates(lws)
    digest = leader["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION]
    assert worker["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] == digest == template_hash(lws)
    assert template_hash(build_leaderworkerset(_md(replicas=4), settings)) == digest
    changed = _md(runtime={"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]})
    assert template_hash(build_leaderworkerset(changed, settings)) != digest
    assert build_leaderworkerset(md, settings) == lws  # deterministic


def test_the_service_selects_only_the_leaders(md: ModelDeployment) -> None:
    service = build_leader_service(md)
    assert service["metadata"]["name"] == "llama-405b"
    assert service["spec"]["selector"] == {**OWNER, "leaderworkerset.sigs.k8s.io/worker-index": "0"}
    assert leader_selector_string(md) == (
        "kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name=llama-405b,"
        "leaderworkerset.sigs.k8s.io/worker-index=0"
    )


# -- the startup scripts, run by a real sh with stand-ins for ray and python3 ----------------------


def _bin(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _run(tmp_path: Path, script: str, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "POD_IP": "10.0.0.5",
        "LWS_LEADER_ADDRESS": "llama-lws-0.llama-lws.ns",
        "KUBEFORGE_ENGINE_GPUS": "16",
        "KUBEFORGE_ENGINE_WAIT_SECONDS": "30",
        **env,
    }
    return subprocess.run(
        ["/bin/sh", "-c", script, *argv], env=environ, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_leader_starts_triton_only_once_every_gpu_has_joined(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _bin(tmp_path, "ray", f'echo "ray $*" >> {log}\n')
    # the Ray cluster's GPUs: 8 (the leader alone) at the first look, 16 at the second
    _bin(tmp_path, "python3", f'n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/n\n'
         '[ "$n" -ge 1 ] && echo 16 || echo 8\n')  # fmt: skip
    _bin(tmp_path, "sleep", "")
    _bin(tmp_path, "tritonserver", f'echo "tritonserver $*" >> {log}\n')
    done = _run(tmp_path, LEADER_SCRIPT, "tritonserver", "--model-repository=/models", "--http-port=8000")
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "ray start --head --port=6379 --node-ip-address=10.0.0.5 --include-dashboard=false --disable-usage-stats",
        "tritonserver --model-repository=/models --http-port=8000",
    ]
    assert (tmp_path / "n").read_text().strip() == "2"


def test_the_leader_gives_up_when_the_workers_never_join(tmp_path: Path) -> None:
    _bin(tmp_path, "ray", "")
    _bin(tmp_path, "python3", "echo 8\n")
    _bin(tmp_path, "sleep", "")
    _bin(tmp_path, "tritonserver", "exit 99\n")
    done = _run(tmp_path, LEADER_SCRIPT, "tritonserver", KUBEFORGE_ENGINE_WAIT_SECONDS="0")
    assert done.returncode == 1
    assert "only 8 of 16 GPUs joined the Ray cluster in time" in done.stderr


def test_a_worker_retries_until_the_head_answers_then_stays(tmp_path: Path) -> None:
    log = tmp_path / "log"
    # `ray start --address` fails twice (the head is still starting), then joins and blocks
    _bin(tmp_path, "ray", f'echo "ray $*" >> {log}\n[ $(wc -l < {log}) -ge 3 ]\n')
    _bin(tmp_path, "sleep", "")
    done = _run(tmp_path, WORKER_SCRIPT)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    assert (
        lines
        == [
            "ray start --address=llama-lws-0.llama-lws.ns:6379 --node-ip-address=10.0.0.5 --disable-usage-stats --block"
        ]
        * 3
    )


def test_the_apis_name_limit_is_the_builders() -> None:
    """The API refuses (CEL, tests/data/invalid_specs.py) a multi-node name whose groups' pods LWS could
    not make: their controller-revision-hash label <name>-lws-99-<10 characters> must fit 63."""
    from kubeforge.api.modeldeployment import MAX_MULTI_NODE_NAME_LENGTH as API_LIMIT

    assert API_LIMIT == MAX_MULTI_NODE_NAME_LENGTH == 45
